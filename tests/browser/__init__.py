"""A package, so this directory's conftest does not shadow tests/conftest.py, which
other test modules import by name (`from conftest import ...`)."""
