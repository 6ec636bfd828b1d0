"""Helpers shared by the test folders (no tests here); imported as ``helpers.<module>``.

``tests/`` is on ``sys.path`` through the root ``tests/conftest.py``; test modules import
from this package, never from a ``conftest`` (several conftest.py files exist, one per folder).
"""
