"""A package, so that this folder's modules have names of their own (`jetson.conftest`
beside tests/conftest.py) and its tests can name the Sandbox type as `.conftest.Sandbox`."""
