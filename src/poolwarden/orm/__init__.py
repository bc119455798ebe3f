"""SQLAlchemy and SQLModel on poolwarden's pool: ``warden.sqlalchemy(...)``.

Needs SQLAlchemy (``pip install 'poolwarden[sqlalchemy]'``); imported only by those who use it.
"""

from poolwarden.orm.bridge import ConnectionDropped, WardenPool
from poolwarden.orm.resource import AsyncSQLAlchemy, SQLAlchemyResource, SyncSQLAlchemy

__all__ = ["AsyncSQLAlchemy", "ConnectionDropped", "SQLAlchemyResource", "SyncSQLAlchemy", "WardenPool"]
