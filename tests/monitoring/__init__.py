"""A package, so that the monitoring tests import their kit as `.monitoring_kit`, a module
of this folder, under the same name for pytest and mypy."""
