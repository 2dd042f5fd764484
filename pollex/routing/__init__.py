"""Routing: which backend serves a request, when it gives up on one, and what is in flight.

`router` walks the failover chain; `availability` is the cache the background probes
keep; `watchdog` holds one request to its time limits; `inflight` lets shutdown wait for
the requests being answered.
"""
