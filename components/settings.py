"""Where attrflow keeps its files. One data directory, `ATTRFLOW_HOME` (default `.attrflow/`)."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Process-wide settings, read from `ATTRFLOW_*` environment variables."""

    model_config = SettingsConfigDict(env_prefix="ATTRFLOW_")

    home: Path = Path(".attrflow")

    @property
    def datasets_dir(self) -> Path:
        return self.home / "datasets"


def get_settings() -> Settings:
    # Read the environment on every call so tests and CLIs can point ATTRFLOW_HOME elsewhere.
    return Settings()
