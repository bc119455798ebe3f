"""poolwarden[sqlite] with an application's FastAPI 0.120: a ConfigError naming the fix at declaration."""

import fastapi

from poolwarden import ConfigError, Warden

assert fastapi.__version__.startswith("0.120."), fastapi.__version__
db = Warden().pool("db", "sqlite:///unused.db")
try:
    db.connection  # noqa: B018 - declaring the dependency is what must fail
except ConfigError as exc:
    message = str(exc)
else:
    raise AssertionError("FastAPI 0.120 was accepted")
assert "FastAPI >= 0.121" in message, message
assert "pip install -U 'poolwarden[fastapi]'" in message, message
print("ok")
