"""Interop tests: the drf_server fixture lives in tests/conftest.py (daemon tests share it)."""
