"""Stands in for the __main__ of a pytest-xdist worker (conftest.py says why); importing it does nothing."""
