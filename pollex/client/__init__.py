"""Clients that speak to a running pollex over HTTP."""
