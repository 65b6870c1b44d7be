"""Where attrflow keeps its files. One data directory, `ATTRFLOW_HOME` (default `.attrflow/`)."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Process-wide settings, read from `ATTRFLOW_*` environment variables."""

    model_config = SettingsConfigDict(env_prefix="ATTRFLOW_")

    home: Path = Path(".attrflow")
    db_url: str | None = None  # ATTRFLOW_DB_URL: the registry's database (SQLAlchemy URL)
    webhook_url: str | None = None  # ATTRFLOW_WEBHOOK_URL: a JSON POST on drift and on each promotion decision
    # ATTRFLOW_RAY_ADDRESS: the Ray cluster searches and batch scoring use when none is given
    # (ray://head:10001, host:port, or auto); unset: a local Ray on 127.0.0.1, started and stopped per job
    ray_address: str | None = None

    @property
    def datasets_dir(self) -> Path:
        return self.home / "datasets"

    @property
    def database_url(self) -> str:
        """ATTRFLOW_DB_URL if set, else a SQLite file at ATTRFLOW_HOME/registry.db (folder created)."""
        if self.db_url:
            return self.db_url
        self.home.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{(self.home / 'registry.db').resolve()}"


def get_settings() -> Settings:
    # Read the environment on every call so tests and CLIs can point ATTRFLOW_HOME elsewhere.
    return Settings()
