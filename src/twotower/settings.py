"""Runtime settings: one typed object, read from the environment (``TWOTOWER_*`` and ``DATABASE_URL``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from twotower.errors import ConfigError

__all__ = ["Settings", "get_settings"]

_UNSAFE_SECRETS = {"changeme", "secret", "change-me", "password", "test", "dev"}


class Settings(BaseSettings):
    """All runtime configuration. Secrets come from the environment only, never from files in the repo."""

    model_config = SettingsConfigDict(
        env_prefix="TWOTOWER_",
        extra="ignore",
        validate_default=True,
    )

    environment: Literal["development", "test", "production"] = "development"

    # --- store ---------------------------------------------------------------------------------------
    database_url: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("DATABASE_URL", "TWOTOWER_DATABASE_URL"),
        description="Postgres URL (any Postgres >= 15 with pgvector >= 0.7). Unset: the embedded server.",
    )
    data_dir: Path = Field(default=Path(".twotower"), description="Where local state lives.")
    pg_dir: Path | None = Field(default=None, description="Embedded Postgres data dir; default DATA_DIR/pg.")
    read_database_url: SecretStr | None = Field(
        default=None, description="Read replicas (streaming standbys of DATABASE_URL's server): one or more "
        "postgresql:// URLs separated by spaces. The request path's ANN and catalog reads go there.",
    )  # fmt: skip
    read_max_lag_seconds: float = Field(
        default=10.0, gt=0, le=600, description="A replica further behind than this is not read; the primary is."
    )
    read_your_writes: Literal["primary", "wait"] = Field(
        default="primary", description="How a user's own swipes reach their next answer from a lagging replica: "
        "primary: their decisions are read from the primary (one indexed read) and the replica's answer excludes the "
        "recent ones; wait: wait until the replica has replayed the primary's position, up to READ_WAIT_MS, else "
        "the primary answers.",
    )  # fmt: skip
    read_wait_ms: int = Field(default=50, ge=1, le=5000, description="The longest wait of read_your_writes=wait.")
    read_check_seconds: float = Field(default=1.0, gt=0, le=60, description="How often each replica's lag is read.")
    db_connect_timeout: float = Field(default=5.0, gt=0, le=120)
    db_pool_min_size: int = Field(default=1, ge=0, le=100)
    db_pool_max_size: int = Field(default=10, ge=1, le=500)

    # --- registry and deployment --------------------------------------------------------------------------
    artifact_store: str | None = Field(
        default=None,
        description="Where model versions are kept: a directory, or s3://bucket/prefix for any S3-compatible "
        "store (credentials from the usual AWS_* variables). Default: DATA_DIR/artifacts.",
    )
    s3_endpoint_url: str | None = Field(default=None, description="S3 endpoint (MinIO, Supabase Storage, ...).")
    s3_region: str | None = None
    keep_generations: int = Field(
        default=2,
        ge=1,
        le=100,
        description="Retired versions whose embeddings are kept for instant rollback (at least the previous one: "
        "servers still answer with it until they have swapped).",
    )
    deploy_tolerance: float = Field(
        default=0.02, ge=0, le=1, description="Relative Recall@20 drop vs the active model a deploy may have."
    )

    # --- catalog sync (DMM Affiliate API v3) ---------------------------------------------------------------
    dmm_api_id: SecretStr | None = Field(default=None, description="DMM Affiliate API id (from the environment).")
    dmm_affiliate_id: str | None = Field(default=None, description="DMM affiliate id, e.g. `yourname-990`.")
    dmm_api_url: str = Field(
        default="https://api.dmm.com/affiliate/v3/ItemList", pattern=r"^https?://", description="ItemList endpoint."
    )
    dmm_site: str = "FANZA"
    dmm_service: str = "digital"
    dmm_floor: str = "videoa"
    dmm_rate_limit: float = Field(default=1.0, gt=0, le=100, description="Requests per second, at most.")
    dmm_timeout: float = Field(default=20.0, gt=0, le=300, description="Seconds per request.")
    dmm_max_retries: int = Field(default=6, ge=0, le=50, description="Retries of one request before the sync stops.")
    dmm_lookback_hours: float = Field(
        default=0.0,
        ge=0,
        le=24 * 365,
        description="An incremental sync re-reads this much before the watermark (items listed after their date).",
    )
    dmm_max_offset: int = Field(
        default=50_000, ge=100, le=50_000, description="The API's deepest `offset` (lower only to test with a fake)."
    )

    # --- quality monitoring (alert thresholds; shares are fractions of rows) ----------------------------------
    monitor_max_nonfinite: float = Field(default=0.0, ge=0, le=1, description="Rows with NaN/Inf allowed.")
    monitor_norm_tolerance: float = Field(default=0.01, gt=0, le=1, description="Allowed |norm - 1|.")
    monitor_max_mean_cosine: float = Field(
        default=0.98,
        ge=-1,
        le=1,
        description="Collapse: mean pairwise cosine (trained towers share a common "
        "direction, so healthy values of 0.9 and more are normal).",
    )
    monitor_min_effective_rank: float = Field(
        default=0.05, ge=0, le=1, description="Collapse: effective rank as a share of the dimension."
    )
    monitor_max_duplicates: float = Field(default=0.001, ge=0, le=1, description="Identical vectors allowed.")
    monitor_max_missing: float = Field(default=0.01, ge=0, le=1, description="Active videos without embedding.")
    monitor_max_stale: float = Field(default=0.05, ge=0, le=1, description="Embeddings older than their video.")
    monitor_min_neighbour_overlap: float = Field(
        default=0.05, ge=0, le=1, description="Drift: neighbour overlap@10 with the previous generation."
    )
    monitor_max_centroid_shift: float = Field(
        default=1.0, ge=0, le=2, description="Drift: centroid shift after alignment (two trainings differ by 0.3-0.7)."
    )
    monitor_min_like_rate: float = Field(default=0.0, ge=0, le=1, description="Floor of the live like-rate (0: off).")
    monitor_min_like_samples: int = Field(default=200, ge=1, description="Swipes needed before the floor applies.")
    monitor_like_window_hours: float = Field(default=24.0, gt=0, le=24 * 90)
    monitor_webhook_url: str | None = Field(
        default=None, pattern=r"^https?://", description="Alerts are POSTed here as JSON (Slack-compatible relay)."
    )
    monitor_served_retention_days: int = Field(default=14, ge=1, le=3650, description="Served log kept this long.")
    monitor_served_sample: float = Field(
        default=0.1, ge=0, le=1, description="Share of users whose served recommendations are logged (by user id)."
    )

    # --- online experiments (`twotower experiment`) ------------------------------------------------------
    experiment_min_users: int = Field(default=100, ge=2, description="Users per arm before a verdict.")
    experiment_min_decisions: int = Field(default=1000, ge=1, description="Swipes per arm before a verdict.")
    experiment_mixture_sd: float = Field(
        default=0.05, gt=0, le=1, description="mSPRT mixture SD: the like-rate difference the test is tuned for."
    )
    experiment_alpha: float = Field(default=0.05, gt=0, lt=0.5, description="False-positive rate of the verdict.")
    experiment_outcome_hours: float = Field(
        default=24.0, gt=0, le=24 * 30, description="A swipe counts for an exposure this long after it."
    )
    experiment_check_seconds: float = Field(
        default=60.0, ge=1, le=86_400, description="How often one server process checks the running experiment."
    )
    experiment_guardrail: bool = Field(default=True, description="Stop a candidate that is significantly worse.")
    experiment_served_sample: float = Field(
        default=1.0, gt=0, le=1, description="Share of an experiment's users whose answers are logged (by user id)."
    )

    # --- scheduling (cron: five fields, or six with seconds last; empty disables) ------------------------
    schedule_batch_update: str = Field(default="0 3 * * *", description="When `batch-update` runs (UTC).")
    schedule_retrain: str = Field(default="0 4 * * 0", description="When `deploy` (retrain) runs (UTC).")
    schedule_monitor: str = Field(default="30 3 * * *", description="When `monitor` checks the active version (UTC).")
    schedule_sync: str = Field(
        default="15 * * * *", description="When `sync dmm` runs (UTC); only with DMM credentials configured."
    )

    # --- auth (used by the serving API) ----------------------------------------------------------------
    jwt_secret: SecretStr | None = Field(default=None, description="HS256 secret (Supabase: the project's JWT secret).")
    jwt_audience: str = "authenticated"
    jwt_jwks_url: str | None = Field(default=None, description="JWKS URL for RS256/ES256 tokens.")
    jwt_issuer: str | None = Field(default=None, description="When set, tokens must carry this `iss`.")

    # --- serving ---------------------------------------------------------------------------------------
    serve_db_timeout: float = Field(default=1.5, gt=0, le=30, description="Wait for a DB connection, then 503.")
    serve_statement_timeout_ms: int = Field(default=5000, ge=100, le=600_000)
    serve_model_poll_seconds: float = Field(default=30.0, gt=0, le=3600, description="Safety-net model check.")
    serve_max_body_bytes: int = Field(default=1 << 20, ge=1024, le=64 << 20)
    serve_ef_search: int = Field(default=40, ge=10, le=1000, description="hnsw.ef_search for recommendations.")
    serve_onnx_threads: int = Field(default=1, ge=0, le=64, description="ONNX Runtime threads per worker.")
    serve_algorithm: Literal["auto", "popularity", "linear"] = Field(
        default="auto", description="auto: the two-tower model with its fallbacks; popularity or linear: answer every "
        "request with that fallback (a kill switch, and the baselines of `twotower simulate`).",
    )  # fmt: skip
    serve_try_page: bool = Field(
        default=False,
        description="Serve the /try swipe page, which signs short-lived tokens for demo users (needs the JWT secret).",
    )

    @field_validator("database_url", "read_database_url", mode="before")
    @classmethod
    def _empty_url_is_none(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("database_url")
    @classmethod
    def _url_scheme(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            url = value.get_secret_value()
            if not url.startswith(("postgres://", "postgresql://")) and "=" not in url:
                raise ValueError("expected a postgresql:// URL or a libpq key=value string")
        return value

    @field_validator("read_database_url")
    @classmethod
    def _read_urls(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not all(
            url.startswith(("postgres://", "postgresql://")) for url in value.get_secret_value().split()
        ):
            raise ValueError("expected postgresql:// URLs separated by spaces")
        return value

    @model_validator(mode="after")
    def _refuse_unsafe(self) -> Settings:
        if self.db_pool_min_size > self.db_pool_max_size:
            raise ValueError("db_pool_min_size must not exceed db_pool_max_size")
        if self.environment == "production" and self.jwt_secret is not None:
            secret = self.jwt_secret.get_secret_value()
            if secret.lower() in _UNSAFE_SECRETS or len(secret) < 32:
                raise ValueError(
                    "TWOTOWER_JWT_SECRET is a placeholder or shorter than 32 characters; "
                    "set the project's real JWT secret in production"
                )
        return self

    @property
    def embedded_pg_dir(self) -> Path:
        return (self.pg_dir or self.data_dir / "pg").expanduser().absolute()

    @property
    def model_cache_dir(self) -> Path:
        """Where versions fetched from the artifact store are kept (verified) for loading."""
        return (self.data_dir / "models").expanduser().absolute()

    @property
    def read_urls(self) -> list[str]:
        """The read replicas' URLs (none: the primary takes every read)."""
        return self.read_database_url.get_secret_value().split() if self.read_database_url else []

    @property
    def uses_embedded(self) -> bool:
        return self.database_url is None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from None
