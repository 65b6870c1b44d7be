"""Drift reports: one row per monitoring report, and the retraining run it triggered.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# Migrations are frozen history: plain types here, not the classes in schema.py.
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "drift_reports",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_name", sa.String(length=200), nullable=False),
        sa.Column("model_version", sa.Integer(), nullable=False),
        sa.Column("window_start", TIMESTAMP, nullable=True),
        sa.Column("window_end", TIMESTAMP, nullable=True),
        sa.Column("reference_rows", sa.Integer(), nullable=False),
        sa.Column("current_rows", sa.Integer(), nullable=False),
        sa.Column("drifted", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("checks", sa.JSON(), nullable=False),
        sa.Column("snapshot_path", sa.Text(), nullable=False),
        sa.Column("retrain_run_id", sa.Integer(), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(["retrain_run_id"], ["runs.id"], name="fk_drift_reports_retrain_run_id_runs"),
        sa.PrimaryKeyConstraint("id", name="pk_drift_reports"),
    )
    op.create_index("ix_drift_reports_model_name", "drift_reports", ["model_name"])


def downgrade() -> None:
    op.drop_index("ix_drift_reports_model_name", table_name="drift_reports")
    op.drop_table("drift_reports")
