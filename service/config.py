"""Service settings: environment variables with the TRIAGE_ prefix, validated at start-up.

Everything has an embedded default so `triage serve` works with no configuration: SQLite and
photos in ./data, the shipped model. Nested groups (limits, policy) take env variables with a
double underscore, e.g. TRIAGE_LIMITS__MAX_UPLOAD_BYTES=10000000.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, NonNegativeFloat, PositiveFloat, PositiveInt, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.engine import DEFAULT_MODEL_DIR
from service.intake import IntakeLimits
from service.policy import PolicyConfig


class UploadLimits(BaseModel):
    """Caps on what one request may send; enforced while the body streams in."""

    max_upload_bytes: PositiveInt = Field(
        default=25 * 1024 * 1024, description="Largest accepted photo file, in bytes."
    )
    max_files_per_request: PositiveInt = Field(
        default=10, description="Most photos one evidence or listing-image upload may carry."
    )
    max_pixels: PositiveInt = Field(
        default=64_000_000,
        description="Largest accepted image (width x height), read from its header.",
    )
    max_json_bytes: PositiveInt = Field(
        default=1024 * 1024,
        description="Largest accepted request body other than a multipart photo upload (the "
        "JSON requests), in bytes.",
    )

    def intake_limits(self) -> IntakeLimits:
        return IntakeLimits(max_bytes=self.max_upload_bytes, max_pixels=self.max_pixels)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TRIAGE_", env_nested_delimiter="__", extra="ignore", frozen=True
    )

    data_dir: Path = Field(default=Path("data"), description="Database (SQLite) and photo store.")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default SQLite file in data_dir."
    )
    model_dir: Path = Field(default=DEFAULT_MODEL_DIR, description="Model artifact folder.")
    limits: UploadLimits = Field(default_factory=UploadLimits)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    triage_refresh_seconds: PositiveInt = Field(
        default=900,
        description="A background task re-triages open claims whose stored priority is older "
        "than this (priority depends on the deadline, so it ages); queue reads refresh only "
        "those older than twice this, as a safety net.",
    )
    triage_refresh_interval_seconds: PositiveFloat | None = Field(
        default=None,
        description="How often the background refresher re-triages claims older than "
        "`triage_refresh_seconds`; default half of that.",
    )
    duplicate_sync_seconds: NonNegativeFloat = Field(
        default=1.0,
        description="How often at most a process reads the evidence that other processes "
        "(workers, containers on the same database) committed, so that its duplicate look-ups "
        "find their photos too; 0 reads before every upload and check.",
    )
    log_level: str = Field(default="INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$")

    @model_validator(mode="after")
    def _resolve_paths(self) -> Settings:
        # Resolved once here so that a later chdir cannot move the store under a running app.
        object.__setattr__(self, "data_dir", self.data_dir.expanduser().resolve())
        object.__setattr__(self, "model_dir", self.model_dir.expanduser().resolve())
        if self.database_url is None:
            object.__setattr__(
                self, "database_url", f"sqlite:///{self.data_dir / 'triage.sqlite3'}"
            )
        return self

    @property
    def resolved_triage_refresh_interval(self) -> float:
        """Seconds between background refresh rounds (half the refresh age unless set)."""
        if self.triage_refresh_interval_seconds is not None:
            return self.triage_refresh_interval_seconds
        return self.triage_refresh_seconds / 2

    @property
    def photos_dir(self) -> Path:
        return self.data_dir / "photos"

    @property
    def display_dir(self) -> Path:
        """Cached display copies (re-made from the photos whenever missing)."""
        return self.data_dir / "display"

    @property
    def heatmap_dir(self) -> Path:
        """Cached heatmap overlay PNGs (re-rendered whenever missing)."""
        return self.data_dir / "heatmaps"

    @property
    def refresh_lock_path(self) -> Path:
        """Held by the process running a background triage refresh round or start-up
        maintenance, so that of several processes serving this data folder only one runs
        each round and they take turns at start-up (`service.api.startup`)."""
        return self.data_dir / "triage-refresh.lock"

    @property
    def start_up_record_path(self) -> Path:
        """What the last start-up maintenance in this data folder was done for, and when."""
        return self.data_dir / "start-up-maintenance.json"

    @property
    def resolved_database_url(self) -> str:
        assert self.database_url is not None  # set by _resolve_paths
        return self.database_url
