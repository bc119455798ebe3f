"""lifeguard: correct, fast and observable connection lifecycles for FastAPI services."""

from lifeguard.clients.client import Client
from lifeguard.clients.config import ClientConfig
from lifeguard.config import DSN, PoolConfig
from lifeguard.connectors.base import Connector, ServerInfo
from lifeguard.errors import (
    BackendDown,
    ConfigError,
    LeaseEnded,
    LifeguardError,
    PoolClosed,
    PoolOverloaded,
    PoolTimeout,
    Unavailable,
)
from lifeguard.guard import Lifeguard, Resource
from lifeguard.handle import unwrap
from lifeguard.observe.leaks import LeaseInfo
from lifeguard.observe.stats import HistogramSnapshot, PoolStats
from lifeguard.pool import Pool

__all__ = [
    "DSN",
    "BackendDown",
    "Client",
    "ClientConfig",
    "ConfigError",
    "Connector",
    "HistogramSnapshot",
    "LeaseEnded",
    "LeaseInfo",
    "Lifeguard",
    "LifeguardError",
    "Pool",
    "PoolClosed",
    "PoolConfig",
    "PoolOverloaded",
    "PoolStats",
    "PoolTimeout",
    "Resource",
    "ServerInfo",
    "Unavailable",
    "unwrap",
]

__version__ = "0.1.0"
