"""ClientConfig: the validated settings of a shared client, read from keywords and the environment."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from poolwarden.config import PoolConfig, Startup, _check_seconds, build
from poolwarden.errors import ConfigError

__all__ = ["ClientConfig"]

_POOL_ONLY = frozenset(f.name for f in dataclasses.fields(PoolConfig)) - {
    "startup", "startup_timeout", "optional", "connect_timeout", "failure_threshold", "backoff_initial",
    "backoff_max", "probe_interval", "options"}


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientConfig:
    """The settings of one client. Those it shares with :class:`~poolwarden.PoolConfig` mean the same
    and are validated by it; ``health_interval`` is the pause between background pings (None: ping only
    at start-up and after a failure), ``health_path`` the URL path an HTTP client GETs as its ping
    (None: no ping, ready at once), ``options`` the driver factory's keyword arguments."""

    startup: Startup = "wait"
    startup_timeout: float = 30.0
    optional: bool = False
    connect_timeout: float = 10.0
    health_interval: float | None = 10.0
    health_path: str | None = None
    failure_threshold: int = 5
    probe_interval: float = 0.25
    backoff_initial: float = 0.1
    backoff_max: float = 10.0
    options: Mapping[str, Any] = field(default_factory=dict, repr=False)  # may hold secrets

    def __post_init__(self) -> None:
        self._shared()  # same checks and messages as a pool's settings
        _check_seconds(self, "health_interval", optional=True, positive=True)
        path = self.health_path
        if path is not None and (not isinstance(path, str) or not path.startswith("/")):
            raise ConfigError(f"health_path must be a path starting with '/' or None "
                              f"(got health_path={path!r})")

    def _shared(self) -> PoolConfig:
        return PoolConfig(startup=self.startup, startup_timeout=self.startup_timeout, optional=self.optional,
                          connect_timeout=self.connect_timeout, failure_threshold=self.failure_threshold,
                          probe_interval=self.probe_interval,
                          backoff_initial=self.backoff_initial, backoff_max=self.backoff_max,
                          options=self.options)

    @property
    def secrets(self) -> tuple[str, ...]:
        """The values of options whose names look secret (password, token...), for scrubbing."""
        return self._shared().secrets

    @classmethod
    def from_settings(cls, resource: str, settings: Mapping[str, Any],
                      environ: Mapping[str, str] | None = None) -> ClientConfig:
        """Keyword settings, then ``POOLWARDEN_<RESOURCE>_<SETTING>`` variables, then the defaults."""
        misplaced = {key: "is for pools, not for clients: the driver pools its own connections (pass "
                     "its own limits in options=)" for key in _POOL_ONLY}
        config: ClientConfig = build(cls, resource, "client", settings, environ, misplaced)
        return config
