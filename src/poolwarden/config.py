"""Validated settings, environment loading, and URL parsing with its credentials kept apart.

A URL is parsed once, by :class:`DSN`: its user name and password (from the user info or the query
string, encoded or not) come out as values that connectors hand to their driver as parameters, next to
a URL that holds no credentials. Everything that could reach a log line, repr, exception, health body or
metric shows a DSN redacted, and error texts through :class:`Secrets`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl, quote, unquote, urlencode

from poolwarden.errors import ConfigError

__all__ = ["DSN", "PoolConfig", "Secrets", "public_error"]

_SECRET_KEYS = re.compile(r"pass|secret|token|key|auth|credential", re.IGNORECASE)
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]*$")
REDACTED = "***"
#: Longest duration any setting accepts (a year): longer ones overflow timers and socket timeouts.
MAX_SECONDS = 365 * 24 * 3600.0
#: Secrets shorter than this, or made of letters only or digits only (a word, a number), are treated
#: as found in every error text: whether such a string happens to occur in a message would tell
#: something about it.
_WEAK = 8

# -- secrets -------------------------------------------------------------------------------------


def _sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE (PostgreSQL, SQLAlchemy over it) or MySQL error number of a driver error."""
    orig = getattr(exc, "orig", None)  # SQLAlchemy's DBAPIError wraps the driver's
    if isinstance(orig, BaseException) and orig is not exc:
        return _sqlstate(orig)
    state = getattr(exc, "sqlstate", None)
    if isinstance(state, str) and re.fullmatch(r"[0-9A-Z]{5}", state):
        return f"SQLSTATE {state}"
    code = exc.args[0] if exc.args else None
    if type(exc).__module__.startswith(("asyncmy", "pymysql", "aiomysql")) and isinstance(code, int):
        return f"MySQL error {code}"
    response = getattr(exc, "response", None)  # httpx.HTTPStatusError
    status = getattr(response, "status_code", None)
    if isinstance(status, int):
        return f"HTTP {status}"
    return None


def public_error(exc: BaseException) -> str:
    """What may be shown about an error outside the logs: its class and, where the driver has one,
    its SQLSTATE (``InvalidPasswordError (SQLSTATE 28P01)``). Never the message, which can carry
    user and host names, internal addresses or parts of the query."""
    code = _sqlstate(exc)
    return f"{type(exc).__name__} ({code})" if code else type(exc).__name__


@dataclass(frozen=True, slots=True)
class Secrets:
    """The secret strings of one resource, so that no text showing one of them is ever shown.

    There is no partial starring: a scrubber that stars each occurrence of a password reveals a short
    one by what it starred (``Oper***tion***lError``). A text in which a secret occurs, in any
    encoding or letter case, is withheld whole; so is every text when a secret is weak (shorter than 8
    characters, or letters or digits only: a word or number that may occur by chance), since whether
    it occurs would itself tell something about it.
    """

    values: tuple[str, ...] = field(default=(), repr=False)  # the repr must not show them

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", tuple(v for v in self.values if v))

    def __add__(self, other: Secrets) -> Secrets:
        return Secrets((*self.values, *other.values))

    def exposed_in(self, text: str) -> bool:
        """Whether showing ``text`` could reveal something about a secret."""
        folded = text.casefold()
        for value in self.values:
            if len(value) < _WEAK or value.isalpha() or value.isdigit():
                return True
            for form in _forms(value):
                if form.casefold() in folded:
                    return True
        return False

    def scrub(self, text: str) -> str:
        """``text``, or a fixed notice when it could reveal a secret."""
        return "(text withheld: it may contain a secret)" if self.exposed_in(text) else text

    def describe(self, exc: BaseException) -> str:
        """The error for a log line: its public description and, unless withheld, the driver's message."""
        head = public_error(exc)
        message = str(exc).strip()
        if not message:
            return head
        # a codec error describes the string it failed on: a character of the password and its place
        if self.exposed_in(message) or (self.values and isinstance(exc, UnicodeError)):
            return f"{head}: (message withheld: it may contain a secret)"
        return f"{head}: {message}"


def _forms(value: str) -> Iterator[str]:
    """The ways a secret can be written in a text: raw, percent-encoded, repr-escaped, libpq-quoted."""
    yield value
    yield quote(value, safe="")
    yield quote(value)
    yield repr(value)[1:-1]
    yield value.replace("\\", "\\\\").replace("'", "\\'")


def secret_values(options: Mapping[str, Any]) -> tuple[str, ...]:
    """The strings held under secret-looking names (password, token, auth...), nested ones included:
    ``auth=("user", "pw")``, ``headers={"Authorization": "Bearer ..."}``."""
    found: list[str] = []

    def collect(value: Any, secret: bool) -> None:
        if isinstance(value, str | bytes):
            text = value.decode(errors="replace") if isinstance(value, bytes) else value
            if secret and text:
                found.append(text)
        elif isinstance(value, Mapping):
            for key, item in value.items():
                collect(item, secret or bool(_SECRET_KEYS.search(str(key))))
        elif isinstance(value, tuple | list):
            for item in value:
                collect(item, secret)
        elif secret:  # an object under a secret name (httpx.BasicAuth keeps its encoded header)
            for item in getattr(value, "__dict__", {}).values():
                collect(item, True)
            for name in ("password", "_password", "token", "_auth_header"):
                item = getattr(value, name, None)
                if isinstance(item, str | bytes):
                    collect(item, True)

    collect(options, False)
    return tuple(dict.fromkeys(found))


# -- URLs ----------------------------------------------------------------------------------------

# host[:port], comma-separated for libpq's multi-host URLs, ending where the path, query or fragment starts
_AUTHORITY_END = re.compile(r"(?:\[[^\]/?#@]*\]|[^/?#@:\[\],]*)(?::[^/?#@,]*)?"
                            r"(?:,(?:\[[^\]/?#@]*\]|[^/?#@:\[\],]*)(?::[^/?#@,]*)?)*(?=[/?#]|$)")
_HOST_PATH_QUERY = re.compile(r"[^/?#@:]*:[0-9]{1,5}(?:/[^?#]*)?\?[^#]*=")
_USER_KEYS = ("user", "username")
_PASSWORD_KEYS = ("password",)
_NO_FRAGMENT = frozenset({"postgresql", "postgres", "mysql", "mariadb", "sqlite", "redis", "rediss", "unix"})


def _split_credentials(rest: str) -> tuple[str | None, str]:
    """``user:password`` and the rest of an authority-first URL tail.

    The credentials end at the last '@' that a host (and port) follows, so a password may hold any
    character unencoded, '@', ':', '/', '?' and '#' included; the user name must not hold '/', '?', '#'
    (so a URL without credentials whose query holds a '@' is not taken for one with them).
    """
    at = len(rest)
    while (at := rest.rfind("@", 0, at)) >= 0:
        userinfo = rest[:at]
        user = userinfo.partition(":")[0]
        end = _AUTHORITY_END.match(rest, at + 1)
        if not end or re.search(r"[/?#]", user):
            continue
        if end.end() == len(rest) and _HOST_PATH_QUERY.match(userinfo):
            continue  # host:5432/db?user=me@corp: a query value, not a password "5432/db?user=me"
        return userinfo, rest[at + 1:]
    return None, rest


class DSN:
    """A connection URL parsed once. ``str()`` and ``repr()`` give it redacted; :attr:`username` and
    :attr:`password` are the decoded credentials (from the user info or ``?user=``/``?password=``),
    :meth:`url` the URL without them, for a driver that is handed the credentials as parameters."""

    __slots__ = ("_fragment", "_hosts", "_pairs", "_path", "_url", "driver", "password", "scheme",
                 "secrets", "username")

    def __init__(self, url: str) -> None:
        if not isinstance(url, str):
            raise ConfigError(f"url must be a string such as postgresql://user@host/db "
                              f"(got url of type {type(url).__name__})")
        scheme_text, sep, rest = url.partition("://")
        if not sep and url.startswith("sqlite:"):  # sqlite:relative.db: a path and nothing else
            scheme_text, sep, rest = "sqlite", "://", "/" + url[len("sqlite:"):]
        if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9.+\-]*", scheme_text):
            raise ConfigError(f"url must look like scheme://... (got url={_shown(url)})")
        self._url = url
        base, _, driver = scheme_text.partition("+")
        self.scheme = base.lower()
        self.driver = driver.lower() or None
        userinfo, rest = _split_credentials(rest)
        user = password = None
        if userinfo is not None:
            user_text, colon, password_text = userinfo.partition(":")
            user = unquote(user_text) or None
            password = unquote(password_text) if colon else None
        hosts_end = re.search(r"[/?#]", rest)
        self._hosts = rest[:hosts_end.start()] if hosts_end else rest
        tail = rest[len(self._hosts):]
        fragment = ""
        if self.scheme not in _NO_FRAGMENT:  # a database URL has no fragment: a '#' is literal
            tail, hash_, fragment = tail.partition("#")
            fragment = hash_ + fragment
        path, _, query = tail.partition("?")
        self._path = path
        self._fragment = fragment
        pairs: list[tuple[str, str]] = []
        for key, value in parse_qsl(query, keep_blank_values=True):
            if key in _USER_KEYS or key in _PASSWORD_KEYS:
                given = password if key in _PASSWORD_KEYS else user
                if given is not None and given != value:
                    raise ConfigError(f"url gives the {'password' if key in _PASSWORD_KEYS else 'user'} "
                                      f"twice, in its user info and in ?{key}= (url={_shown(url)})")
                if key in _PASSWORD_KEYS:
                    password = value
                else:
                    user = value or None
            else:
                pairs.append((key, value))
        self._pairs = tuple(pairs)
        self.username: str | None = user
        self.password: str | None = password
        found = [password] if password else []
        found += [v for k, v in pairs if _SECRET_KEYS.search(k) and v]
        self.secrets = Secrets(tuple(found))
        self._check_ports()

    def _check_ports(self) -> None:
        for host in self._hosts.split(","):
            port = (host.rpartition("]")[2] if host.startswith("[") else host).partition(":")[2]
            if port and not (re.fullmatch(r"[0-9]{1,5}", port) and 0 < int(port) < 65536):
                raise ConfigError(f"url has a bad port: it must be 1-65535 (got port={port!r} in "
                                  f"url={self.redacted!r})")

    def credentials(self, options: Mapping[str, Any], user_key: str = "user",
                    password_key: str = "password") -> dict[str, Any]:
        """The user name and password as a driver's keyword arguments; raises ConfigError (never showing
        a value) when ``options`` gives a different one too."""
        found: dict[str, Any] = {}
        for key, value in ((user_key, self.username), (password_key, self.password)):
            if value is None:
                continue
            if key in options and options[key] != value:
                raise ConfigError(f"the {key} is given twice, in the URL and in options={{{key!r}: ...}}: "
                                  "give it once")
            found[key] = value
        return found

    def reveal(self) -> str:
        """The URL as given, credentials included: prefer :meth:`url` and the credential attributes."""
        return self._url

    def url(self, *, scheme: str | None = None, credentials: bool = False) -> str:
        """The URL without user name and password (with them percent-encoded if ``credentials``, for
        a library that only takes a URL), its query re-encoded; ``scheme`` replaces the scheme."""
        userinfo = ""
        if credentials and (self.username is not None or self.password is not None):
            userinfo = quote(self.username or "", safe="")
            if self.password is not None:
                userinfo += ":" + quote(self.password, safe="")
            userinfo += "@"
        return self._build(scheme or self._scheme_text, userinfo=userinfo)

    @property
    def _scheme_text(self) -> str:
        return self.scheme + (f"+{self.driver}" if self.driver else "")

    def _build(self, scheme: str, userinfo: str) -> str:
        query = urlencode(self._pairs, safe="*") if self._pairs else ""
        return (f"{scheme}://{userinfo}{self._hosts}{self._path}{'?' + query if query else ''}"
                f"{self._fragment}")

    def _host_port(self) -> tuple[str | None, int | None]:
        first = self._hosts.split(",")[0]
        if first.startswith("["):
            host, _, port = first[1:].partition("]")
            port = port.lstrip(":")
        else:
            host, _, port = first.partition(":")
        return (unquote(host) or None), (int(port) if port else None)

    @property
    def host(self) -> str | None:
        """The (first) host name, decoded; None when the URL has none."""
        return self._host_port()[0]

    @property
    def port(self) -> int | None:
        return self._host_port()[1]

    @property
    def hosts(self) -> str:
        """The URL's host list as written (``h1:5432,h2:5433``), for drivers that take several."""
        return self._hosts

    @property
    def database(self) -> str:
        return unquote(self._path.lstrip("/"))

    @property
    def path(self) -> str:
        return unquote(self._path)

    @property
    def raw_query(self) -> str:
        """The query string re-encoded, without ``user`` and ``password``."""
        return urlencode(self._pairs, safe="*")

    @property
    def query(self) -> dict[str, str]:
        """The query parameters, without ``user`` and ``password`` (see :attr:`username`)."""
        return dict(self._pairs)

    @property
    def redacted(self) -> str:
        pairs = [(k, REDACTED if _SECRET_KEYS.search(k) and v else v) for k, v in self._pairs]
        user = quote(self.username, safe="") if self.username else ""
        userinfo = f"{user}:{REDACTED}@" if self.password is not None else f"{user}@" if user else ""
        query = urlencode(pairs, safe="*")
        return (f"{self._scheme_text}://{userinfo}{self._hosts}{self._path}{'?' + query if query else ''}"
                f"{self._fragment}")

    def __str__(self) -> str:
        return self.redacted

    def __repr__(self) -> str:
        return f"DSN({self.redacted!r})"


def _shown(text: str) -> str:
    """A malformed URL as it may be quoted in an error: whole when it cannot hold a credential."""
    if re.search(r"[@=]", text):
        return f"(a {len(text)}-character string, not shown: it may hold a password)"
    return repr(text)


# -- settings ------------------------------------------------------------------------------------

Startup = Literal["wait", "lazy"]
Reset = Literal["default", "full"]


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolConfig:
    """The settings of one pool; see the README's settings table for what each one does.

    A new setting is a field here with its check in ``__post_init__``, and a key of
    :class:`poolwarden.settings.PoolSettings`; the environment reader parses it by its annotation.
    """

    min_size: int = 1
    max_size: int = 10
    acquire_timeout: float = 10.0
    max_waiting: int | None = None  # None: QUEUE_PER_CONNECTION x max_size; 0: no bound
    adaptive_queue: bool = True  # CoDel-style control: newest first while the queue stands
    queue_target: float = 0.005
    queue_interval: float = 0.1
    max_response_lease: float | None = 60.0  # release="response" leases end after this
    max_lifetime: float | None = 1800.0
    max_idle: float | None = 600.0
    check_after_idle: float | None = 1.0
    keepalive_interval: float | None = 60.0
    connect_timeout: float = 10.0
    backoff_initial: float = 0.1
    backoff_max: float = 10.0
    failure_threshold: int = 5
    probe_interval: float = 0.25
    startup: Startup = "wait"
    startup_timeout: float = 30.0
    optional: bool = False
    leak_threshold: float | None = None
    drain_timeout: float = 10.0
    reset: Reset = "default"
    reset_timeout: float = 5.0
    pgbouncer: bool = False
    options: Mapping[str, Any] = field(default_factory=dict, repr=False)  # may hold secrets

    def __post_init__(self) -> None:
        _check_int(self, "min_size", minimum=0)
        _check_int(self, "max_size", minimum=1)
        if self.max_waiting is not None:
            _check_int(self, "max_waiting", minimum=0)
        _check_int(self, "failure_threshold", minimum=1)
        if self.max_size < self.min_size:
            raise ConfigError(
                f"max_size must be >= min_size (got max_size={self.max_size}, min_size={self.min_size})"
            )
        for name in ("acquire_timeout", "connect_timeout", "startup_timeout", "drain_timeout",
                     "reset_timeout", "backoff_initial", "backoff_max", "probe_interval",
                     "queue_target", "queue_interval"):
            _check_seconds(self, name, optional=False)
        for name in ("max_lifetime", "max_idle", "check_after_idle", "keepalive_interval",
                     "leak_threshold", "max_response_lease"):
            _check_seconds(self, name, optional=True)
        if self.backoff_max < self.backoff_initial:
            raise ConfigError(
                "backoff_max must be >= backoff_initial "
                f"(got backoff_max={self.backoff_max}, backoff_initial={self.backoff_initial})"
            )
        _check_choice(self, "startup", Startup)
        _check_choice(self, "reset", Reset)
        for name in ("optional", "pgbouncer", "adaptive_queue"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be a bool (got {name}={getattr(self, name)!r})")
        _check_options(self.options)

    @property
    def secrets(self) -> tuple[str, ...]:
        return secret_values(self.options)

    @classmethod
    def from_settings(
        cls, resource: str, settings: Mapping[str, Any], environ: Mapping[str, str] | None = None
    ) -> PoolConfig:
        """Build a config from keyword settings, then ``POOLWARDEN_<RESOURCE>_<SETTING>`` variables.

        Keyword arguments win over the environment, which wins over the defaults.
        """
        config: PoolConfig = build(cls, resource, "resource", settings, environ)
        return config


def build(cls: type[Any], resource: str, what: str, settings: Mapping[str, Any],
          environ: Mapping[str, str] | None, misplaced: Mapping[str, str] | None = None) -> Any:
    """``cls(**values)`` from keyword ``settings`` over the environment over the defaults; every error
    names the key and the value, and the environment variable when the value came from one.

    ``misplaced`` maps names that are settings elsewhere (a pool's, for a client) to why they are refused.
    """
    misplaced = misplaced or {}
    known = _field_types(cls)
    for key in settings:
        if key in misplaced:
            raise ConfigError(f"setting {key!r} {misplaced[key]} (for {what} {resource!r})")
        if key not in known:
            raise ConfigError(f"unknown setting {key!r} for {what} {resource!r}{_did_you_mean(key, known)}")
    from_env = env_settings(cls, resource, environ, misplaced=misplaced)
    values = {**from_env, **settings}
    try:
        return cls(**values)
    except ConfigError as exc:
        sources = [env_var(resource, key) for key in from_env if key not in settings
                   and f"{key}=" in str(exc)]
        if not sources:
            raise
        error = ConfigError(f"{exc} (from the environment: {', '.join(sources)})")
    raise error  # outside the except block: no chained copy of the same message


def env_var(resource: str, setting: str) -> str:
    return f"POOLWARDEN_{env_name(resource)}_{setting.upper()}"


def env_url(resource: str, environ: Mapping[str, str] | None) -> str | None:
    """``POOLWARDEN_<RESOURCE>_URL``, or None when unset; an empty one is a ConfigError naming it."""
    env = os.environ if environ is None else environ
    var = env_var(resource, "url")
    url = env.get(var)
    if url is not None and not url.strip():
        raise ConfigError(f"{var} is empty: unset it, or give the resource's URL (got {var}={url!r})")
    error = None
    if url is not None:
        try:
            DSN(url)
        except ConfigError as exc:
            error = ConfigError(f"{exc} (from the environment: {var})")
    if error is not None:
        raise error
    return url


#: Suffixes of ``POOLWARDEN_<RESOURCE>_*`` that something other than the settings reads.
ENV_READ_ELSEWHERE: set[str] = {"url"}


def env_settings(cls: type[Any], resource: str, environ: Mapping[str, str] | None,
                 text: frozenset[str] = frozenset(), misplaced: Mapping[str, str] | None = None
                 ) -> dict[str, Any]:
    """The ``POOLWARDEN_<RESOURCE>_<SETTING>`` values for the fields of the config class ``cls``, each
    parsed by its annotation. A variable of this resource that names no setting is an error naming
    the closest one. (``text`` is accepted for compatibility: string fields are read as text anyway.)"""
    del text
    env = os.environ if environ is None else environ
    prefix = f"POOLWARDEN_{env_name(resource)}_"
    types = _field_types(cls)
    names = set(types) | ENV_READ_ELSEWHERE | set(misplaced or ())
    values: dict[str, Any] = {}
    for var, raw in env.items():
        if not var.startswith(prefix):
            continue
        key = var[len(prefix):].lower()
        if key in (misplaced or {}):
            raise ConfigError(f"{var}: setting {key!r} {(misplaced or {})[key]} (for {resource!r})")
        if key in ENV_READ_ELSEWHERE:
            continue
        if key == "options":
            raise ConfigError(f"{var}: options cannot come from the environment (they may be objects "
                              "and hold secrets): pass options= where the resource is declared")
        if key not in types:
            if any(key.endswith("_" + n) for n in names):
                continue  # POOLWARDEN_DB_REPLICA_MAX_SIZE belongs to a resource named db_replica
            hint = _did_you_mean(key, [n for n in types if n != "options"], env_prefix=prefix)
            raise ConfigError(f"{var} names no setting of {resource!r} (got {var}={raw!r}){hint}")
        values[key] = parse_env(var, key, raw, types[key])
    return values


def _did_you_mean(key: str, names: Any, env_prefix: str | None = None) -> str:
    close = difflib.get_close_matches(key, list(names), n=1, cutoff=0.6)
    if not close:
        return ""
    return f"; did you mean {env_prefix + close[0].upper() if env_prefix else repr(close[0])}?"


def env_name(resource: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", resource).upper()


def check_resource_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(
            f"resource name must start with a letter and hold letters, digits, '_' or '-' (got {name!r})"
        )
    return name


_FIELD_TYPES: dict[type[Any], dict[str, Any]] = {}


def _field_types(cls: type[Any]) -> dict[str, Any]:
    types = _FIELD_TYPES.get(cls)
    if types is None:
        hints = typing.get_type_hints(cls)
        types = _FIELD_TYPES[cls] = {f.name: hints[f.name] for f in dataclasses.fields(cls)}
    return types


_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def parse_env(var: str, name: str, raw: str, annotation: Any) -> Any:
    """The value of environment variable ``var`` for setting ``name`` of type ``annotation``.

    Strict on purpose: only ASCII digits make a number (not Arabic-Indic or fullwidth digits, nor
    '1_000', all of which int() and float() accept), 'inf' and 'nan' are not numbers, and an empty
    value is an error, not "off"."""
    args = typing.get_args(annotation)
    nullable = type(None) in args
    union = bool(args) and typing.get_origin(annotation) is not Literal
    kinds = {a for a in args if a is not type(None)} if union else {annotation}
    text = raw.strip()
    got = f"(got {var}={raw!r})"
    if not text:
        off = " or 'off'" if nullable else ""
        raise ConfigError(f"{var} is empty: unset it for the default{off} {got}")
    if nullable and text.lower() in ("none", "off"):
        return None
    if bool in kinds:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ConfigError(f"{name} must be a bool: true/false, yes/no, on/off, 1/0 {got}")
    if int in kinds:
        if not _INT.fullmatch(text):
            raise ConfigError(f"{name} must be an integer written in ASCII digits {got}")
        return int(text)
    if float in kinds:
        if not _FLOAT.fullmatch(text):
            raise ConfigError(f"{name} must be a number of seconds written in ASCII digits "
                              f"{'(or off) ' if nullable else ''}{got}")
        return float(text)
    return text


def _check_int(cfg: Any, name: str, *, minimum: int) -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer (got {name}={value!r})")
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum} (got {name}={value!r})")


def _check_seconds(cfg: Any, name: str, *, optional: bool, positive: bool = False) -> None:
    value = getattr(cfg, name)
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number of seconds (got {name}={value!r})")
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an int too large for a float
        finite = False
    if not finite or value < 0 or (value == 0 and (positive or name in _POSITIVE)):
        raise ConfigError(f"{name} must be a positive number of seconds (got {name}={value!r})")
    if value > MAX_SECONDS:
        raise ConfigError(f"{name} must be at most {MAX_SECONDS:.0f} seconds, a year "
                          f"(got {name}={value!r})")


def _check_choice(cfg: Any, name: str, choices: Any) -> None:
    value = getattr(cfg, name)
    allowed = typing.get_args(choices)
    if value not in allowed or not isinstance(value, str):
        options = " or ".join(repr(a) for a in allowed)
        raise ConfigError(f"{name} must be {options} (got {name}={value!r})")


def _check_options(options: Any) -> None:
    if not isinstance(options, Mapping):
        raise ConfigError(f"options must be a mapping (got options={type(options).__name__})")
    bad = [key for key in options if not isinstance(key, str)]
    if bad:
        raise ConfigError(f"options keys must be strings (got a key of type {type(bad[0]).__name__})")


_POSITIVE = {"acquire_timeout", "connect_timeout", "keepalive_interval", "max_lifetime",
             "max_idle", "leak_threshold", "backoff_initial", "backoff_max", "reset_timeout",
             "probe_interval", "queue_target", "queue_interval", "max_response_lease"}
