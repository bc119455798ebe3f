"""Property tests of the configuration surface: URLs and their credentials, settings, environment values.

Each property is one that a hand-picked example list kept missing: a password with any character, in
any encoding, comes back exactly and leaves no trace in what is shown; nothing a user can type makes
anything but a valid config or a ConfigError.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from poolwarden import ConfigError, PoolConfig
from poolwarden.clients import ClientConfig, driver_for
from poolwarden.config import DSN, MAX_SECONDS, Secrets
from poolwarden.connectors import connector_for

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# every printable ASCII character, some non-ASCII ones, and whitespace
passwords = st.text(alphabet=st.sampled_from(string.printable + "\u00e9\u20ac\u00df\u0663\uff15\u00a0"),
                    min_size=1, max_size=24)
users = st.text(alphabet=string.ascii_letters + string.digits + "._-", min_size=1, max_size=12)
hosts = st.sampled_from(["db", "127.0.0.1", "db.internal", "[::1]"])
ports = st.one_of(st.none(), st.integers(1, 65535))
databases = st.text(alphabet=string.ascii_letters + string.digits + "_", min_size=1, max_size=10)
schemes = st.sampled_from(["postgresql", "postgresql+psycopg", "mysql", "mariadb", "redis", "http"])


def _url(scheme: str, user: str, password: str, host: str, port: int | None, db: str, query: str = "") -> str:
    netloc = f"{host}:{port}" if port else host
    return f"{scheme}://{user}:{password}@{netloc}/{db}{query}"


def _raw_safe(password: str) -> bool:
    # a '%' followed by two hex digits is an escape: to mean it literally, it must be encoded
    return not re.search(r"%[0-9A-Fa-f]{2}", password)


@FAST
@given(schemes, users, passwords, hosts, ports, databases, st.booleans())
def test_any_password_is_parsed_back_exactly(scheme: str, user: str, password: str, host: str,
                                             port: int | None, db: str, encode: bool) -> None:
    """Encoded or not, the password comes back exactly, and the rest of the URL is unharmed."""
    if not encode:
        assume(_raw_safe(password))
    written = quote(password, safe="") if encode else password
    dsn = DSN(_url(scheme, user, written, host, port, db))
    assert (dsn.username, dsn.password) == (user, password)
    assert dsn.host == host.strip("[]")
    assert dsn.port == port
    assert dsn.database == db


@FAST
@given(users, passwords, passwords, hosts, ports, databases)
def test_what_is_shown_does_not_depend_on_the_password(user: str, first: str, second: str, host: str,
                                                       port: int | None, db: str) -> None:
    """str(), repr() and the URL handed to drivers are the same whatever the password: no oracle."""
    assume(_raw_safe(first) and _raw_safe(second))
    one = DSN(_url("postgresql", user, first, host, port, db, "?sslmode=disable"))
    two = DSN(_url("postgresql", user, second, host, port, db, "?sslmode=disable"))
    assert (str(one), repr(one), one.url()) == (str(two), repr(two), two.url())
    assert one.url() == f"postgresql://{host}{f':{port}' if port else ''}/{db}?sslmode=disable"


@FAST
@given(users, passwords, hosts, databases)
def test_query_credentials_equal_user_info_credentials(user: str, password: str, host: str, db: str) -> None:
    """?user=...&password=... (encoded) means the same as user info, and shows the same."""
    query = DSN(f"postgresql://{host}/{db}?user={quote(user)}&password={quote(password, safe='')}")
    userinfo = DSN(_url("postgresql", user, quote(password, safe=""), host, None, db))
    assert (query.username, query.password) == (user, password)
    assert str(query) == str(userinfo)
    assert query.url() == userinfo.url()


@FAST
@given(st.text(max_size=60), passwords, passwords)
def test_short_secrets_make_no_oracle_and_long_ones_never_show(text: str, first: str, second: str) -> None:
    """Two short secrets scrub any text alike; a long one never survives scrub() or describe()."""
    if len(first) < 8 and len(second) < 8:
        assert Secrets((first,)).scrub(text) == Secrets((second,)).scrub(text)
    secret = first * (1 + 8 // len(first))
    shown = Secrets((secret,)).scrub(text + secret)
    assert secret.casefold() not in shown.casefold()
    described = Secrets((secret,)).describe(RuntimeError(f"{text} {quote(secret, safe='')}"))
    assert quote(secret, safe="").casefold() not in described.casefold()


# -- anything typed: a config, or a ConfigError --------------------------------------------------


def _attempt(make: Callable[[], PoolConfig]) -> tuple[PoolConfig | None, str]:
    try:
        return make(), ""
    except ConfigError as exc:
        return None, str(exc)


setting_values = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**30), 10**30), st.floats(allow_nan=True),
    st.text(max_size=8), st.sampled_from(["wait", "lazy", "default", "full"]),
)
POOL_KEYS = sorted(f for f in PoolConfig.__dataclass_fields__ if f != "options")


@FAST
@given(st.dictionaries(st.sampled_from(POOL_KEYS), setting_values, max_size=6))
def test_any_keyword_settings_give_a_valid_config_or_a_config_error(values: dict[str, Any]) -> None:
    """Whatever the keywords hold, the result is a config whose durations fit timers, or ConfigError."""
    cfg, error = _attempt(lambda: PoolConfig.from_settings("db", values, environ={}))
    if cfg is None:
        assert [key for key in values if f"{key}=" in error or f"'{key}'" in error], error
        return
    for name in ("acquire_timeout", "connect_timeout", "max_lifetime", "backoff_initial", "backoff_max"):
        value = getattr(cfg, name)
        assert value is None or (math.isfinite(value) and 0 < value <= MAX_SECONDS)


env_values = st.one_of(
    st.text(max_size=10),
    st.from_regex(r"\A[+-]?[0-9]{1,6}(\.[0-9]{0,3})?\Z"),
    st.sampled_from(["", " ", "off", "none", "true", "no", "\u0663", "\uff15", "1_000", "inf", "nan",
                     "1e400", "lazy"]),
)


@FAST
@given(st.dictionaries(st.sampled_from([*POOL_KEYS, "max_szie", "url", "replica_max_size"]), env_values,
                       max_size=6))
def test_any_environment_gives_a_valid_config_or_a_config_error_naming_the_variable(
        values: dict[str, str]) -> None:
    """Whatever the variables hold: a config, or a ConfigError naming a variable that was set."""
    env = {f"POOLWARDEN_DB_{key.upper()}": value for key, value in values.items()}
    cfg, error = _attempt(lambda: PoolConfig.from_settings("db", {}, environ=env))
    if cfg is None:
        assert any(var in error for var in env), error
        return
    for key, raw in values.items():
        value = getattr(cfg, key, None)
        if isinstance(value, bool) or key in ("url", "replica_max_size", "startup", "reset"):
            continue
        if isinstance(value, int | float):
            assert re.fullmatch(r"[+-]?[0-9.]+", raw.strip()), (key, raw)  # only ASCII digits made it
        if value is None:
            assert raw.strip().lower() in ("off", "none")


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=40), st.builds(lambda s, r: f"{s}://{r}", schemes, st.text(max_size=30)),
                 st.builds(lambda r: f"sqlite:///{r}", st.text(max_size=20))))
def test_any_url_gives_a_connector_or_client_or_a_config_error(url: str) -> None:
    """DSN, connector_for and driver_for raise nothing but ConfigError, whatever the URL."""
    try:
        dsn = DSN(url)
    except ConfigError:
        return
    for make in (lambda: connector_for(dsn, PoolConfig()), lambda: driver_for(dsn, ClientConfig()),
                 lambda: driver_for(dsn, ClientConfig(), "sqlalchemy")):
        try:
            make()
        except ConfigError:
            pass


CLIENT_KEYS = sorted(f for f in ClientConfig.__dataclass_fields__ if f != "options")


@FAST
@given(st.dictionaries(st.sampled_from([*CLIENT_KEYS, "max_size", "health_intreval"]), env_values,
                       max_size=5))
def test_any_client_environment_gives_a_valid_config_or_a_config_error_naming_the_variable(
        values: dict[str, str]) -> None:
    """A client's variables too: a config, or a ConfigError naming a variable that was set (a pool's
    setting such as max_size is refused as such)."""
    env = {f"POOLWARDEN_CACHE_{key.upper()}": value for key, value in values.items()}
    try:
        ClientConfig.from_settings("cache", {}, environ=env)
        error = ""
    except ConfigError as exc:
        error = str(exc)
    if "max_size" in values or "health_intreval" in values:
        assert error
    if error:
        assert any(var in error for var in env), error
