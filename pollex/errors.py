"""pollex's own exceptions.

    PollexError
    ├── UpstreamError        an upstream failed; `kind` is the metric label
    │   │                    (connect, timeout, status, protocol); `failover` says whether
    │   │                    another adapter may be tried, `marks_down` whether the
    │   │                    adapter is taken out of rotation at once (design §4)
    │   └── OutputTooLong    the answer passed max_output_chars
    ├── StreamBroken         an upstream failed after text reached the client: never retried
    └── NoAdapterServed      every adapter of the chain was tried and failed

Adapters translate foreign exceptions (aiohttp, json) into these at their boundary; the
router decides about failover; only the views turn them into HTTP statuses.
"""

from __future__ import annotations

from typing import Literal

ErrorKind = Literal["connect", "timeout", "status", "protocol"]


class PollexError(Exception):
    status = 502

    @property
    def message(self) -> str:
        return str(self)


class UpstreamError(PollexError):
    def __init__(
        self,
        message: str,
        *,
        kind: ErrorKind,
        failover: bool = True,
        marks_down: bool = True,
        status: int = 502,
    ) -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind
        self.failover = failover
        self.marks_down = marks_down
        self.status = status


class OutputTooLong(UpstreamError):
    def __init__(self) -> None:
        super().__init__("output too long", kind="protocol", failover=False, marks_down=False)


class StreamBroken(PollexError):
    """The upstream failed mid-answer; the client already has part of it."""

    def __init__(self, cause: UpstreamError) -> None:
        super().__init__(cause.message)
        self.cause = cause
        self.status = cause.status


class NoAdapterServed(PollexError):
    status = 503

    def __init__(self, failures: list[tuple[str, str]]) -> None:
        detail = "; ".join(f"{name}: {reason}" for name, reason in failures)
        super().__init__(
            f"no backend could serve the request ({detail})"
            if detail
            else "no backend could serve the request"
        )
        self.failures = failures
