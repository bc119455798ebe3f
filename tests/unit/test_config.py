"""PoolConfig validation and environment loading, DSN parsing and redaction, Secrets.scrub."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest

from poolwarden import DSN, ConfigError, PoolConfig
from poolwarden.config import Secrets, public_error


def config_error(**settings: Any) -> str:
    with pytest.raises(ConfigError) as info:
        PoolConfig(**settings)
    return str(info.value)


# -- validation ----------------------------------------------------------------------------------


def test_defaults_are_valid() -> None:
    """The documented defaults build a config without complaint."""
    cfg = PoolConfig()
    assert (cfg.min_size, cfg.max_size, cfg.acquire_timeout, cfg.max_waiting) == (1, 10, 10.0, None)
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
    """An unparsable environment value is a ConfigError naming the setting, the variable and the raw text."""
    with pytest.raises(ConfigError, match=re.escape(
            "max_size must be an integer written in ASCII digits (got POOLWARDEN_DB_MAX_SIZE='lots')")):
        PoolConfig.from_settings("db", {}, environ={"POOLWARDEN_DB_MAX_SIZE": "lots"})
    with pytest.raises(ConfigError, match="optional must be a bool"):
        PoolConfig.from_settings("db", {}, environ={"POOLWARDEN_DB_OPTIONAL": "maybe"})


def test_environment_values_are_validated_too() -> None:
    """Values from the environment pass the same validation as keywords."""
    message = ("max_size must be >= min_size (got max_size=1, min_size=2) "
               "(from the environment: POOLWARDEN_DB_MAX_SIZE)")
    with pytest.raises(ConfigError, match=re.escape(message)):
        PoolConfig.from_settings("db", {"min_size": 2}, environ={"POOLWARDEN_DB_MAX_SIZE": "1"})


# -- DSN and secrets -----------------------------------------------------------------------------

URL = "postgresql://app:s%40cr3t-pw@db.internal:5433/appdb?sslmode=require&sslpassword=q2-token"


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
    assert dsn.url() == "postgresql://db.internal:5433/appdb?sslmode=require&sslpassword=q2-token"


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
    with pytest.raises(ConfigError, match=r"url must (look like|be a string)") as info:
        DSN(url)
    assert "pw-xyz" not in str(info.value)


def test_secrets_scrub_withholds_a_text_showing_a_secret_in_any_encoding() -> None:
    """scrub() never stars parts of a text (an oracle): a text showing a secret is withheld whole."""
    secrets = Secrets(("s@cr3t-long-enough",))
    withheld = "(text withheld: it may contain a secret)"
    assert secrets.scrub("auth failed for s@cr3t-long-enough") == withheld
    assert secrets.scrub("auth failed for s%40cr3t-long-enough") == withheld
    assert secrets.scrub("auth failed for S@CR3T-LONG-ENOUGH") == withheld
    assert secrets.scrub("connection refused") == "connection refused"
    assert Secrets(("",)).scrub("unchanged") == "unchanged"


@pytest.mark.parametrize("short", ["a", "on", "ion", "tion", "Error", "user", "s3cret7", "authentication",
                                   "20261130"])
def test_a_weak_secret_withholds_every_text(short: str) -> None:
    """Whether a short password, a word or a number occurs in a text would tell something about it:
    every text is withheld."""
    secrets = Secrets((short,))
    assert secrets.scrub("zzz") == secrets.scrub("OperationalError: user") != "zzz"


def test_secret_options_are_secrets_and_hidden_from_repr() -> None:
    """Options whose key names a secret are scrubbable and never appear in the config's repr."""
    cfg = PoolConfig(options={"password": "opt-pw", "api_token": "tk-1", "application_name": "svc",
                              "auth": ("user", "auth-pw"), "headers": {"Authorization": "Bearer b-1"}})
    assert set(cfg.secrets) == {"opt-pw", "tk-1", "user", "auth-pw", "Bearer b-1"}
    assert "opt-pw" not in repr(cfg)
    assert "tk-1" not in repr(cfg)


# -- credentials: any character, encoded or not ----------------------------------------------------


@pytest.mark.parametrize(
    ("url", "user", "password", "host", "database"),
    [
        ("postgresql://u:p#ss?w/rd@db:5432/app", "u", "p#ss?w/rd", "db", "app"),
        ("postgresql://u:p%23ss%3Fw%2Frd@db:5432/app", "u", "p#ss?w/rd", "db", "app"),
        ("postgresql://u:a@b@c@db/app", "u", "a@b@c", "db", "app"),
        ("postgresql://u:a:b:c@db/app", "u", "a:b:c", "db", "app"),
        ("postgresql://u:%@db/app", "u", "%", "db", "app"),
        ("postgresql://user@srv:pw@db/app", "user@srv", "pw", "db", "app"),
        ("postgresql://u:@db/app", "u", "", "db", "app"),
        ("postgresql://u:p w\"'@[::1]:5433/app", "u", "p w\"'", "::1", "app"),
        ("postgresql://db/app?user=u&password=p%26w", "u", "p&w", "db", "app"),
        ("postgresql://db/app?user=u&password=a#b?c", "u", "a#b?c", "db", "app"),
        ("postgresql://db:5432/app?user=me@corp", "me@corp", None, "db", "app"),
        ("mysql://root:@/x@127.0.0.1:3306/test", "root", "@/x", "127.0.0.1", "test"),
        ("redis://:pw#1@localhost:6379/0", None, "pw#1", "localhost", "0"),
    ],
)
def test_credentials_are_parsed_whatever_they_hold(url: str, user: str | None, password: str | None,
                                                    host: str, database: str) -> None:
    """User and password come out decoded, special characters encoded or not, from the user info or the
    query; the URL a driver gets holds neither, and the redacted one shows no part of the password."""
    dsn = DSN(url)
    assert (dsn.username, dsn.password, dsn.host, dsn.database) == (user, password, host, database)
    if password:
        assert password not in dsn.url()
        assert password not in str(dsn).replace("***", "")
        assert password not in repr(dsn).replace("***", "")
    assert "user=" not in dsn.url()
    assert "password=" not in dsn.url()


def test_password_given_twice_is_refused_without_showing_it() -> None:
    """A password both in the user info and in ?password= is ambiguous: refused, neither value shown."""
    with pytest.raises(ConfigError, match="password twice") as info:
        DSN("postgresql://u:first-pw@db/app?password=second-pw")
    assert "first-pw" not in str(info.value)
    assert "second-pw" not in str(info.value)


@pytest.mark.parametrize("url", ["postgresql://db:99999/app", "postgresql://u:pw@db:abc/app",
                                 "postgresql://db:0/app", "redis://h:-1"])
def test_bad_port_is_a_config_error_naming_it(url: str) -> None:
    """A port that is not 1-65535 is a ConfigError naming the port and the redacted URL."""
    with pytest.raises(ConfigError, match=r"bad port: it must be 1-65535 \(got port=") as info:
        DSN(url)
    assert "pw" not in str(info.value).replace("***", "")


def test_public_error_is_the_class_and_sqlstate_only() -> None:
    """What public bodies show of a driver error: its class and SQLSTATE (or MySQL number), no text."""

    class InvalidPasswordError(Exception):
        sqlstate = "28P01"

    exc = InvalidPasswordError('password authentication failed for user "app"')
    assert public_error(exc) == "InvalidPasswordError (SQLSTATE 28P01)"
    assert public_error(ConnectionRefusedError(111, "refused 10.0.0.7")) == "ConnectionRefusedError"
    long = Secrets(("a-long-secret-value",))
    assert long.describe(exc) == ('InvalidPasswordError (SQLSTATE 28P01): password authentication '
                                  'failed for user "app"')
    assert Secrets(("app",)).describe(exc) == ("InvalidPasswordError (SQLSTATE 28P01): (message "
                                               "withheld: it may contain a secret)")


# -- config never guesses --------------------------------------------------------------------------


def env_error(env: dict[str, str], resource: str = "db") -> str:
    with pytest.raises(ConfigError) as info:
        PoolConfig.from_settings(resource, {}, environ=env)
    return str(info.value)


def test_misspelt_variable_names_the_closest_setting() -> None:
    """POOLWARDEN_DB_MAX_SZIE is refused, naming the variable, its value and the closest setting."""
    message = env_error({"POOLWARDEN_DB_MAX_SZIE": "5"})
    assert message == ("POOLWARDEN_DB_MAX_SZIE names no setting of 'db' (got POOLWARDEN_DB_MAX_SZIE='5'); "
                       "did you mean POOLWARDEN_DB_MAX_SIZE?")


def test_variables_of_a_longer_resource_name_and_the_url_are_not_typos() -> None:
    """POOLWARDEN_DB_REPLICA_MAX_SIZE belongs to "db_replica", POOLWARDEN_DB_URL is the URL."""
    env = {"POOLWARDEN_DB_REPLICA_MAX_SIZE": "3", "POOLWARDEN_DB_URL": "sqlite://",
           "POOLWARDEN_DB_MAX_SIZE": "4"}
    assert PoolConfig.from_settings("db", {}, environ=env).max_size == 4
    assert PoolConfig.from_settings("db_replica", {}, environ=env).max_size == 3


def test_misspelt_keyword_names_the_closest_setting() -> None:
    """A misspelt keyword is refused with the closest setting."""
    message = r"unknown setting 'max_sise' for resource 'db'; did you mean 'max_size'\?"
    with pytest.raises(ConfigError, match=message):
        PoolConfig.from_settings("db", {"max_sise": 2}, environ={})


@pytest.mark.parametrize("name", ["MAX_IDLE", "MAX_SIZE", "STARTUP", "OPTIONAL"])
def test_empty_variable_is_an_error_not_off(name: str) -> None:
    """An empty variable is refused (it used to switch max_idle off), naming it."""
    assert env_error({f"POOLWARDEN_DB_{name}": " "}).startswith(f"POOLWARDEN_DB_{name} is empty")


@pytest.mark.parametrize("raw", ["\u0663", "\uff15", "1_000", "inf", "nan", "1e", "0x10", "5s", "\u00b2"])
def test_only_ascii_digits_are_numbers(raw: str) -> None:
    """Arabic-Indic and fullwidth digits, underscores, inf/nan and units are not numbers."""
    assert f"(got POOLWARDEN_DB_MAX_SIZE={raw!r})" in env_error({"POOLWARDEN_DB_MAX_SIZE": raw})
    assert f"(got POOLWARDEN_DB_ACQUIRE_TIMEOUT={raw!r})" in env_error({"POOLWARDEN_DB_ACQUIRE_TIMEOUT": raw})


def test_off_switches_off_only_what_can_be_off() -> None:
    """'off' turns an optional duration off; for a required one it is an error naming the variable."""
    assert PoolConfig.from_settings("db", {}, environ={"POOLWARDEN_DB_MAX_IDLE": "off"}).max_idle is None
    assert "POOLWARDEN_DB_ACQUIRE_TIMEOUT='off'" in env_error({"POOLWARDEN_DB_ACQUIRE_TIMEOUT": "off"})


def test_backoff_initial_zero_is_refused() -> None:
    """backoff_initial=0 would reconnect to a dead backend in a busy loop."""
    assert config_error(backoff_initial=0) == (
        "backoff_initial must be a positive number of seconds (got backoff_initial=0)")


@pytest.mark.parametrize("value", [1e300, 10**400, 400 * 24 * 3600])
def test_huge_seconds_are_a_config_error_not_an_overflow(value: float) -> None:
    """A duration beyond a year is refused at declaration (later it overflows timers and sockets)."""
    assert "acquire_timeout must be" in config_error(acquire_timeout=value)
    assert "from the environment: POOLWARDEN_DB_MAX_LIFETIME" in env_error(
        {"POOLWARDEN_DB_MAX_LIFETIME": "1e300"})


def test_settings_typed_dicts_match_the_configs() -> None:
    """Every config field is a typed keyword of the same type (add new settings to poolwarden.settings)."""
    import typing

    from poolwarden.clients import ClientConfig
    from poolwarden.settings import ClientSettings, PoolSettings

    for config, settings in ((PoolConfig, PoolSettings), (ClientConfig, ClientSettings)):
        fields = typing.get_type_hints(config)
        keys = typing.get_type_hints(settings)
        assert set(keys) == {f.name for f in dataclasses.fields(config)}, f"{settings.__name__} out of step"
        for key, kind in keys.items():
            assert kind == fields[key], key


def test_empty_url_variable_is_an_error_naming_it() -> None:
    """POOLWARDEN_DB_URL='' is refused naming the variable, for pools, clients and ORM resources."""
    from poolwarden import Warden

    for declare in (lambda w: w.pool("db"), lambda w: w.client("db"), lambda w: w.sqlalchemy("db")):
        with pytest.raises(ConfigError, match=r"POOLWARDEN_DB_URL is empty"):
            declare(Warden(environ={"POOLWARDEN_DB_URL": " "}))


def test_credentials_in_driver_objects_are_secrets() -> None:
    """An httpx.BasicAuth under options={'auth': ...} is a secret: its encoded header is scrubbed."""
    import base64

    import httpx

    cfg = PoolConfig(options={"auth": httpx.BasicAuth("u", "pw-long-enough")})
    header = "Basic " + base64.b64encode(b"u:pw-long-enough").decode()
    assert cfg.secrets == (header,)
    assert Secrets(cfg.secrets).scrub(f"sent {header}") == "(text withheld: it may contain a secret)"


def test_client_durations_are_bounded_too() -> None:
    """A client's health_interval beyond a year is refused like a pool's durations."""
    from poolwarden.clients import ClientConfig

    with pytest.raises(ConfigError, match=r"health_interval must be at most"):
        ClientConfig(health_interval=1e300)
    with pytest.raises(ConfigError, match=r"health_interval must be a positive number of seconds"):
        ClientConfig(health_interval=0)


@pytest.mark.parametrize("url", ["postgresql+psycopg://app:pw@db/app", "postgresql+asyncpg://app@db/app",
                                 "postgresql://app@db/app", "sqlite+aiosqlite:///x.db"])
def test_sqlalchemy_kind_takes_urls_with_an_async_dialect(url: str) -> None:
    """kind='sqlalchemy' takes any SQLAlchemy URL whose dialect has an async variant."""
    from poolwarden.clients import ClientConfig, driver_for

    assert driver_for(DSN(url), ClientConfig(), "sqlalchemy").driver == "sqlalchemy"


def test_bad_url_from_the_environment_names_the_variable() -> None:
    """A URL from POOLWARDEN_DB_URL that does not parse is refused naming the variable, password hidden."""
    from poolwarden import Warden

    message = r"got port='99999'.*\(from the environment: POOLWARDEN_DB_URL\)"
    with pytest.raises(ConfigError, match=message) as info:
        Warden(environ={"POOLWARDEN_DB_URL": "postgresql://u:pw-long-x@h:99999/db"}).pool("db")
    assert "pw-long-x" not in str(info.value)


def test_misspelt_scheme_names_the_closest() -> None:
    """An unknown scheme lists the supported ones and the closest."""
    from poolwarden.connectors import connector_for

    with pytest.raises(ConfigError, match=r"unsupported URL scheme 'postgress'.*did you mean 'postgres'\?"):
        connector_for(DSN("postgress://u@h/db"), PoolConfig())


def test_options_cannot_come_from_the_environment() -> None:
    """POOLWARDEN_DB_OPTIONS is refused with the reason, not taken for a typo."""
    message = env_error({"POOLWARDEN_DB_OPTIONS": "{}"})
    assert message.startswith("POOLWARDEN_DB_OPTIONS: options cannot come from the environment")
