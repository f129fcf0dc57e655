from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from twotower.errors import ConfigError
from twotower.settings import Settings, get_settings


def test_defaults_use_embedded_store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    s = Settings()
    assert s.uses_embedded and s.embedded_pg_dir == (Path(".twotower") / "pg").absolute()


def test_database_url_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:p@db.example.com:5432/app")
    s = Settings()
    assert not s.uses_embedded
    assert "p@" not in repr(s)  # the URL is a secret: never printed


@pytest.mark.parametrize("secret", ["changeme", "short-but-not-placeholder"])
def test_production_refuses_unsafe_jwt_secret(secret: str) -> None:
    with pytest.raises(ValidationError, match="JWT_SECRET"):
        Settings(environment="production", jwt_secret=secret)
    Settings(environment="development", jwt_secret=secret)  # fine on a laptop


def test_bad_values_are_config_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWOTOWER_DB_POOL_MAX_SIZE", "0")
    get_settings.cache_clear()
    try:
        with pytest.raises(ConfigError, match="db_pool_max_size"):
            get_settings()
    finally:
        get_settings.cache_clear()


def test_read_replica_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    """TWOTOWER_READ_DATABASE_URL: postgresql:// URLs separated by spaces, secret (never printed); anything else
    is a one-line ConfigError that quotes no password."""
    urls = " postgresql://u:hunter22@r1:5432/app  postgres://u:hunter22@r2/app "
    monkeypatch.setenv("TWOTOWER_READ_DATABASE_URL", urls)
    s = Settings()
    assert s.read_urls == ["postgresql://u:hunter22@r1:5432/app", "postgres://u:hunter22@r2/app"]
    assert "hunter22" not in repr(s)
    monkeypatch.setenv("TWOTOWER_READ_DATABASE_URL", "")
    assert Settings().read_urls == []
    for bad in ("host=r1 password=hunter22", "postgresql://u:hunter22@r1/app mysql://u:hunter22@r2/app"):
        monkeypatch.setenv("TWOTOWER_READ_DATABASE_URL", bad)
        get_settings.cache_clear()
        try:
            with pytest.raises(ConfigError, match=r"read_database_url: .*postgresql:// URLs") as raised:
                get_settings()
            assert "hunter22" not in str(raised.value)
        finally:
            get_settings.cache_clear()
    monkeypatch.setenv("TWOTOWER_READ_DATABASE_URL", "postgresql://u:hunter22@r1/app")
    monkeypatch.setenv("TWOTOWER_READ_YOUR_WRITES", "eventually")
    get_settings.cache_clear()
    try:
        with pytest.raises(ConfigError, match="read_your_writes"):
            get_settings()
    finally:
        get_settings.cache_clear()
