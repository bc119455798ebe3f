"""The notes demo service (``poolwarden demo``); its app is in ``poolwarden.demo.app``.

Nothing is imported here, so ``import poolwarden`` never needs FastAPI: the demo's dependencies come
with ``pip install 'poolwarden[demo]'``.
"""
