"""Example apps for ``procbus run``.

Run one from this directory (``cd examples && procbus run asgi_app:app``) or
from the repository root as ``examples.asgi_app:app`` (the tests do).
"""
