"""Minimal Django project serving drf-chunked-upload for the interop tests.

Run by ``tests/support/drf.py`` in a subprocess (waitress); not imported by pytest.
"""
