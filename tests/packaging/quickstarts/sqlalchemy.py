"""poolwarden[sqlalchemy]: the engine client; without a driver extra, a ConfigError naming the extra."""

from poolwarden import ConfigError, Warden

try:
    Warden().client("orm", "sqlite+aiosqlite:///x.db", kind="sqlalchemy")
except ConfigError as exc:
    message = str(exc)
else:
    raise AssertionError("a SQLAlchemy URL whose driver is not installed was accepted")
assert "pip install 'poolwarden[sqlalchemy,sqlite]'" in message, message
print("ok")
