"""Validated settings, environment loading, and DSN parsing with redaction.

Outside this module a DSN only exists redacted: everything that could reach a log line, repr,
exception, health body or metric goes through :class:`DSN` or :func:`Secrets.scrub`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from poolwarden.errors import ConfigError

__all__ = ["DSN", "PoolConfig", "Secrets"]

_SECRET_KEYS = re.compile(r"pass|secret|token|key|sslpassword", re.IGNORECASE)
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]*$")
REDACTED = "***"


@dataclass(frozen=True, slots=True)
class Secrets:
    """The secret strings of one resource, so any text can be scrubbed before it is shown."""

    values: tuple[str, ...] = field(default=(), repr=False)  # the repr must not show them

    def scrub(self, text: str) -> str:
        for value in self.values:
            if value:
                text = text.replace(value, REDACTED)
                quoted = quote(value, safe="")
                if quoted != value:
                    text = text.replace(quoted, REDACTED)
        return text


class DSN:
    """A connection URL; ``str()`` and ``repr()`` give it redacted, :meth:`reveal` the real one."""

    __slots__ = ("_parts", "_url", "driver", "scheme", "secrets")

    def __init__(self, url: str) -> None:
        if not isinstance(url, str) or ("://" not in url and not url.startswith("sqlite:")):
            raise ConfigError(f"url must look like scheme://... (got {_redact_loose(str(url))!r})")
        self._url = url
        self._parts = urlsplit(url)
        base, _, driver = self._parts.scheme.partition("+")
        self.scheme = base.lower()
        self.driver = driver.lower() or None
        found: list[str] = []
        if self._parts.password:
            found.append(unquote(self._parts.password))
        for key, value in parse_qsl(self._parts.query, keep_blank_values=True):
            if _SECRET_KEYS.search(key) and value:
                found.append(value)
        self.secrets = Secrets(tuple(found))

    def reveal(self) -> str:
        """The URL with its password: only for handing to a driver."""
        return self._url

    @property
    def host(self) -> str | None:
        return self._parts.hostname

    @property
    def port(self) -> int | None:
        return self._parts.port

    @property
    def username(self) -> str | None:
        return unquote(self._parts.username) if self._parts.username else None

    @property
    def password(self) -> str | None:
        return unquote(self._parts.password) if self._parts.password else None

    @property
    def database(self) -> str:
        return unquote(self._parts.path.lstrip("/"))

    @property
    def path(self) -> str:
        return unquote(self._parts.path)

    @property
    def query(self) -> dict[str, str]:
        return dict(parse_qsl(self._parts.query, keep_blank_values=True))

    @property
    def redacted(self) -> str:
        parts = self._parts
        netloc = parts.netloc
        if parts.password is not None:
            user = parts.username or ""
            host = netloc.rpartition("@")[2]
            netloc = f"{user}:{REDACTED}@{host}"
        query = parts.query
        if query:
            pairs = [
                (k, REDACTED if _SECRET_KEYS.search(k) and v else v)
                for k, v in parse_qsl(query, keep_blank_values=True)
            ]
            query = urlencode(pairs, safe="*")
        out = urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
        if not netloc and self._url.startswith(f"{parts.scheme}://"):
            out = f"{parts.scheme}://{out[len(parts.scheme) + 1:]}"  # sqlite:///x keeps its slashes
        return out

    def __str__(self) -> str:
        return self.redacted

    def __repr__(self) -> str:
        return f"DSN({self.redacted!r})"


def _redact_loose(text: str) -> str:
    # not a well-formed URL, so the password's place is a guess: hide whatever sits in user:...@
    return re.sub(r"([^:/@\s]+:)[^@\s]*@", r"\1" + REDACTED + "@", text)


Startup = Literal["wait", "lazy"]
Reset = Literal["default", "full"]


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolConfig:
    """The settings of one pool; see the README's settings table for what each one does."""

    min_size: int = 1
    max_size: int = 10
    acquire_timeout: float = 10.0
    max_waiting: int = 0
    max_lifetime: float | None = 1800.0
    max_idle: float | None = 600.0
    check_after_idle: float | None = 1.0
    keepalive_interval: float | None = 60.0
    connect_timeout: float = 10.0
    backoff_initial: float = 0.1
    backoff_max: float = 10.0
    failure_threshold: int = 5
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
        _check_int(self, "max_waiting", minimum=0)
        _check_int(self, "failure_threshold", minimum=1)
        if self.max_size < self.min_size:
            raise ConfigError(
                f"max_size must be >= min_size (got max_size={self.max_size}, min_size={self.min_size})"
            )
        for name in ("acquire_timeout", "connect_timeout", "startup_timeout", "drain_timeout",
                     "reset_timeout", "backoff_initial", "backoff_max"):
            _check_seconds(self, name, optional=False)
        for name in ("max_lifetime", "max_idle", "check_after_idle", "keepalive_interval",
                     "leak_threshold"):
            _check_seconds(self, name, optional=True)
        if self.backoff_max < self.backoff_initial:
            raise ConfigError(
                "backoff_max must be >= backoff_initial "
                f"(got backoff_max={self.backoff_max}, backoff_initial={self.backoff_initial})"
            )
        if self.startup not in ("wait", "lazy"):
            raise ConfigError(f"startup must be 'wait' or 'lazy' (got startup={self.startup!r})")
        if self.reset not in ("default", "full"):
            raise ConfigError(f"reset must be 'default' or 'full' (got reset={self.reset!r})")
        for name in ("optional", "pgbouncer"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be a bool (got {name}={getattr(self, name)!r})")
        if not isinstance(self.options, Mapping):
            raise ConfigError(f"options must be a mapping (got options={type(self.options).__name__})")

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(
            str(v) for k, v in self.options.items() if _SECRET_KEYS.search(k) and v
        )

    @classmethod
    def from_settings(
        cls, resource: str, settings: Mapping[str, Any], environ: Mapping[str, str] | None = None
    ) -> PoolConfig:
        """Build a config from keyword settings, then ``POOLWARDEN_<RESOURCE>_<SETTING>`` variables.

        Keyword arguments win over the environment, which wins over the defaults.
        """
        known = {f.name: f for f in dataclasses.fields(cls)}
        for key in settings:
            if key not in known:
                raise ConfigError(f"unknown setting {key!r} for resource {resource!r}")
        values = env_settings(cls, resource, environ)
        values.update(settings)
        try:
            return cls(**values)
        except TypeError as exc:  # pragma: no cover - all keys were checked above
            raise ConfigError(str(exc)) from None


def env_settings(cls: type[Any], resource: str, environ: Mapping[str, str] | None,
                 text: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The ``POOLWARDEN_<RESOURCE>_<SETTING>`` values for the fields of the config class ``cls``,
    parsed by each field's default type (names in ``text`` are kept as strings; none/off mean None)."""
    env = os.environ if environ is None else environ
    prefix = f"POOLWARDEN_{env_name(resource)}_"
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        raw = env.get(prefix + f.name.upper())
        if raw is None or f.name == "options":
            continue
        if f.name in text:
            values[f.name] = None if raw.strip().lower() in ("", "none", "off") else raw.strip()
        else:
            values[f.name] = _parse_env(f.name, raw, f.default)
    return values


def env_name(resource: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", resource).upper()


def check_resource_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(
            f"resource name must start with a letter and hold letters, digits, '_' or '-' (got {name!r})"
        )
    return name


def _parse_env(name: str, raw: str, default: Any) -> Any:
    text = raw.strip()
    if text.lower() in ("none", "off", ""):
        return None
    if isinstance(default, bool):
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no"):
            return False
        raise ConfigError(f"{name} must be a bool (got {name}={raw!r} from the environment)")
    if isinstance(default, int):
        try:
            return int(text)
        except ValueError:
            raise ConfigError(
                f"{name} must be an integer (got {name}={raw!r} from the environment)"
            ) from None
    if isinstance(default, float) or default is None:
        try:
            return float(text)
        except ValueError:
            raise ConfigError(
                f"{name} must be a number of seconds (got {name}={raw!r} from the environment)"
            ) from None
    return text


def _check_int(cfg: PoolConfig, name: str, *, minimum: int) -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer (got {name}={value!r})")
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum} (got {name}={value!r})")


def _check_seconds(cfg: PoolConfig, name: str, *, optional: bool) -> None:
    value = getattr(cfg, name)
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number of seconds (got {name}={value!r})")
    if not math.isfinite(value) or value < 0 or (value == 0 and name in _POSITIVE):
        raise ConfigError(f"{name} must be a positive number of seconds (got {name}={value!r})")


_POSITIVE = frozenset({"acquire_timeout", "connect_timeout", "keepalive_interval", "max_lifetime",
                       "max_idle", "leak_threshold", "backoff_max", "reset_timeout"})
