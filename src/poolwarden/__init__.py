"""poolwarden: correct, fast and observable connection lifecycles for FastAPI services."""

import logging as _logging

from poolwarden.clients.client import Client
from poolwarden.clients.config import ClientConfig
from poolwarden.config import DSN, PoolConfig
from poolwarden.connectors.base import Connector, ServerInfo
from poolwarden.errors import (
    BackendDown,
    BackendLost,
    ConfigError,
    LeaseEnded,
    PoolClosed,
    PoolOverloaded,
    PoolTimeout,
    PoolwardenError,
    TransactionFailed,
    Unavailable,
)
from poolwarden.handle import unwrap
from poolwarden.observe.leaks import LeaseInfo
from poolwarden.observe.stats import HistogramSnapshot, PoolStats
from poolwarden.pool import Pool
from poolwarden.warden import Override, Resource, Warden

__all__ = [
    "DSN",
    "BackendDown",
    "BackendLost",
    "Client",
    "ClientConfig",
    "ConfigError",
    "Connector",
    "HistogramSnapshot",
    "LeaseEnded",
    "LeaseInfo",
    "Override",
    "Pool",
    "PoolClosed",
    "PoolConfig",
    "PoolOverloaded",
    "PoolStats",
    "PoolTimeout",
    "PoolwardenError",
    "Resource",
    "ServerInfo",
    "TransactionFailed",
    "Unavailable",
    "Warden",
    "unwrap",
]

__version__ = "0.1.0"

# The library convention (logging HOWTO): records go nowhere until the application configures logging,
# instead of Python's last-resort handler printing WARNINGs to stderr.
_logging.getLogger("poolwarden").addHandler(_logging.NullHandler())
