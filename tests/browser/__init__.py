"""A package, so that this folder's modules have names of their own: `browser.test_page`
beside integration/test_page.py, `browser.conftest` beside tests/conftest.py."""
