"""PoolConfig validation and environment loading, DSN parsing and redaction, Secrets.scrub."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest

from poolwarden import DSN, ConfigError, PoolConfig
from poolwarden.config import Secrets


def config_error(**settings: Any) -> str:
    with pytest.raises(ConfigError) as info:
        PoolConfig(**settings)
    return str(info.value)


# -- validation ----------------------------------------------------------------------------------


def test_defaults_are_valid() -> None:
    """The documented defaults build a config without complaint."""
    cfg = PoolConfig()
    assert (cfg.min_size, cfg.max_size, cfg.acquire_timeout, cfg.max_waiting) == (1, 10, 10.0, 0)
    assert (cfg.startup, cfg.reset, cfg.leak_threshold) == ("wait", "default", None)


def test_max_below_min_names_both_values() -> None:
    """max_size < min_size is refused with a message naming both keys and values."""
    assert config_error(min_size=5, max_size=2) == "max_size must be >= min_size (got max_size=2, min_size=5)"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"min_size": -1}, "min_size must be >= 0 (got min_size=-1)"),
        ({"max_size": 0, "min_size": 0}, "max_size must be >= 1 (got max_size=0)"),
        ({"max_size": 2.5}, "max_size must be an integer (got max_size=2.5)"),
        ({"max_size": True}, "max_size must be an integer (got max_size=True)"),
        ({"max_waiting": -3}, "max_waiting must be >= 0 (got max_waiting=-3)"),
        ({"failure_threshold": 0}, "failure_threshold must be >= 1 (got failure_threshold=0)"),
        ({"acquire_timeout": 0},
         "acquire_timeout must be a positive number of seconds (got acquire_timeout=0)"),
        ({"connect_timeout": -1.0},
         "connect_timeout must be a positive number of seconds (got connect_timeout=-1.0)"),
        ({"drain_timeout": "5"}, "drain_timeout must be a number of seconds (got drain_timeout='5')"),
        ({"max_lifetime": float("inf")},
         "max_lifetime must be a positive number of seconds (got max_lifetime=inf)"),
        ({"leak_threshold": 0}, "leak_threshold must be a positive number of seconds (got leak_threshold=0)"),
        ({"backoff_initial": 2.0, "backoff_max": 1.0},
         "backoff_max must be >= backoff_initial (got backoff_max=1.0, backoff_initial=2.0)"),
        ({"startup": "eager"}, "startup must be 'wait' or 'lazy' (got startup='eager')"),
        ({"reset": "none"}, "reset must be 'default' or 'full' (got reset='none')"),
        ({"optional": 1}, "optional must be a bool (got optional=1)"),
        ({"options": []}, "options must be a mapping (got options=list)"),
    ],
)
def test_bad_values_are_refused_naming_key_and_value(settings: dict[str, Any], message: str) -> None:
    """Each invalid setting raises ConfigError whose message names the key and the bad value."""
    assert config_error(**settings) == message


def test_optional_durations_accept_none_and_zero_where_meaningful() -> None:
    """None turns an optional duration off; check_after_idle=0 means "always check"."""
    cfg = PoolConfig(max_lifetime=None, max_idle=None, check_after_idle=0, keepalive_interval=None)
    assert cfg.max_lifetime is None
    assert cfg.check_after_idle == 0


def test_config_is_frozen_and_keyword_only() -> None:
    """A config cannot be changed after validation, nor built positionally."""
    cfg = PoolConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.max_size = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        PoolConfig(1, 2)  # type: ignore[misc]


def test_config_error_is_a_value_error() -> None:
    """Generic ``except ValueError`` handlers catch configuration errors."""
    with pytest.raises(ValueError, match="min_size"):
        PoolConfig(min_size=-1)


# -- settings and environment --------------------------------------------------------------------


def test_unknown_setting_is_refused_with_its_name() -> None:
    """A misspelt keyword is a ConfigError naming it and the resource."""
    with pytest.raises(ConfigError, match=r"unknown setting 'max_szie' for resource 'db'"):
        PoolConfig.from_settings("db", {"max_szie": 3}, environ={})


def test_environment_supplies_settings() -> None:
    """POOLWARDEN_<RESOURCE>_<SETTING> variables are parsed to the setting's type."""
    env = {
        "POOLWARDEN_DB_MAX_SIZE": "7",
        "POOLWARDEN_DB_ACQUIRE_TIMEOUT": "2.5",
        "POOLWARDEN_DB_LEAK_THRESHOLD": "30",
        "POOLWARDEN_DB_MAX_LIFETIME": "none",
        "POOLWARDEN_DB_OPTIONAL": "true",
        "POOLWARDEN_DB_STARTUP": "lazy",
        "POOLWARDEN_OTHER_MAX_SIZE": "99",
    }
    cfg = PoolConfig.from_settings("db", {}, environ=env)
    assert cfg.max_size == 7
    assert cfg.acquire_timeout == 2.5
    assert cfg.leak_threshold == 30.0
    assert cfg.max_lifetime is None
    assert cfg.optional is True
    assert cfg.startup == "lazy"


def test_resource_names_map_to_upper_snake_env_prefixes() -> None:
    """A resource named "read-db" reads POOLWARDEN_READ_DB_* variables."""
    cfg = PoolConfig.from_settings("read-db", {}, environ={"POOLWARDEN_READ_DB_MIN_SIZE": "3"})
    assert cfg.min_size == 3


def test_keyword_arguments_beat_the_environment() -> None:
    """A keyword setting wins over the same setting in the environment."""
    cfg = PoolConfig.from_settings("db", {"max_size": 4}, environ={"POOLWARDEN_DB_MAX_SIZE": "7"})
    assert cfg.max_size == 4


def test_bad_environment_value_names_the_variable_value() -> None:
    """An unparsable environment value is a ConfigError naming the setting and the raw text."""
    with pytest.raises(ConfigError, match=re.escape("max_size must be an integer (got max_size='lots' from")):
        PoolConfig.from_settings("db", {}, environ={"POOLWARDEN_DB_MAX_SIZE": "lots"})
    with pytest.raises(ConfigError, match="optional must be a bool"):
        PoolConfig.from_settings("db", {}, environ={"POOLWARDEN_DB_OPTIONAL": "maybe"})


def test_environment_values_are_validated_too() -> None:
    """Values from the environment pass the same validation as keywords."""
    message = "max_size must be >= min_size (got max_size=1, min_size=2)"
    with pytest.raises(ConfigError, match=re.escape(message)):
        PoolConfig.from_settings("db", {"min_size": 2}, environ={"POOLWARDEN_DB_MAX_SIZE": "1"})


# -- DSN and secrets -----------------------------------------------------------------------------

URL = "postgresql://app:s%40cr3t-pw@db.internal:5433/appdb?sslmode=require&password=q2-token"


def test_dsn_parses_its_parts() -> None:
    """A DSN exposes scheme, driver, host, port, user, database and query."""
    dsn = DSN("postgresql+psycopg://app:pw@db.internal:5433/appdb?sslmode=require")
    assert (dsn.scheme, dsn.driver) == ("postgresql", "psycopg")
    assert (dsn.host, dsn.port, dsn.username, dsn.database) == ("db.internal", 5433, "app", "appdb")
    assert dsn.password == "pw"
    assert dsn.query == {"sslmode": "require"}


def test_dsn_str_and_repr_hide_the_password_and_secret_query_values() -> None:
    """Neither str() nor repr() of a DSN shows the password or a ?password= value."""
    dsn = DSN(URL)
    for text in (str(dsn), repr(dsn), f"{dsn}", f"{dsn!r}"):
        assert "s%40cr3t-pw" not in text
        assert "s@cr3t-pw" not in text
        assert "q2-token" not in text
        assert "app:***@db.internal:5433/appdb" in text
        assert "password=***" in text
        assert "sslmode=require" in text
    assert dsn.reveal() == URL


def test_dsn_secrets_hold_decoded_values_and_do_not_show_in_repr() -> None:
    """The secrets of a DSN are its decoded password and secret query values, never shown by repr."""
    dsn = DSN(URL)
    assert set(dsn.secrets.values) == {"s@cr3t-pw", "q2-token"}
    assert "cr3t" not in repr(dsn.secrets)
    assert "q2-token" not in repr(dsn.secrets)


def test_dsn_without_password_is_unchanged() -> None:
    """A URL with no secret is shown as it is."""
    assert str(DSN("redis://localhost:6379/0")) == "redis://localhost:6379/0"


@pytest.mark.parametrize("url", ["postgres//app:pw-xyz@host/db", "postgresql:/app:pw-xyz@host/db", 42])
def test_malformed_url_error_does_not_show_the_password(url: Any) -> None:
    """A URL refused as malformed is quoted in the error with its password hidden."""
    with pytest.raises(ConfigError, match="url must look like") as info:
        DSN(url)
    assert "pw-xyz" not in str(info.value)


def test_secrets_scrub_removes_raw_and_url_encoded_values() -> None:
    """scrub() replaces each secret, plain or percent-encoded, with ***."""
    secrets = Secrets(("s@cr3t", "tok"))
    text = "auth failed for s@cr3t (s%40cr3t) using tok"
    assert secrets.scrub(text) == "auth failed for *** (***) using ***"
    assert Secrets(("",)).scrub("unchanged") == "unchanged"


def test_secret_options_are_secrets_and_hidden_from_repr() -> None:
    """Options whose key names a secret are scrubbable and never appear in the config's repr."""
    cfg = PoolConfig(options={"password": "opt-pw", "api_token": "tk-1", "application_name": "svc"})
    assert set(cfg.secrets) == {"opt-pw", "tk-1"}
    assert "opt-pw" not in repr(cfg)
    assert "tk-1" not in repr(cfg)
