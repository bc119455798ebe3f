"""poolwarden[docs]: the documentation tools import."""

import importlib

for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python", "mkdocs_awesome_nav"):
    importlib.import_module(module)
print("ok")
