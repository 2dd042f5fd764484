"""pollex's own exceptions, and the outcome each one is logged and counted as.

    PollexError                     status  outcome
    ├── BadRequest                  400     bad_request      the client's request is wrong
    │   └── UnknownModel            400     bad_request      `model_id` names no backend
    ├── ModelNotFound               404     bad_request      OpenAI's answer to an unknown model
    ├── Unauthorized                401     unauthorized     missing or wrong API key
    ├── Forbidden                   403     forbidden        a Host pollex does not answer
    │                                                        without an API key (DNS rebinding)
    ├── BodyTimeout                 408     client_timeout   the body missed body_timeout_s
    ├── UnsupportedMediaType        415     bad_request      a POST body that is not JSON
    ├── RateLimited                 429     rate_limited     the client's window is full
    ├── UpstreamError               502     upstream_error   an upstream failed; `kind` is the
    │   │                                                    metric label (connect, timeout,
    │   │                                                    status, protocol), `failover` says
    │   │                                                    whether another backend may be
    │   │                                                    tried, `marks_down` whether this
    │   │                                                    one is taken out of rotation
    │   └── OutputTooLong           502     upstream_error   the answer passed max_output_chars
    ├── ClientStalled               499     client_stalled   the client stopped reading: never
    │                                                        counted against the upstream
    ├── StreamBroken                (its cause's)            an upstream failed after text
    │                                                        reached the client: never retried
    ├── NoAdapterServed             503     no_backend       every backend of the chain failed
    ├── QueueFull                   503     queue_full       every candidate's queue is full
    ├── ServerShuttingDown          503     shutting_down    the grace time after SIGTERM is over
    └── RequestTimeout              504     timeout          the whole request took too long

Adapters translate foreign exceptions (aiohttp, json) into these at their boundary; the
router decides about failover; only the web face turns them into HTTP answers, whose body
shape depends on the API the route belongs to. `code` is the machine-readable error code
of OpenAI's error shape.
"""

from __future__ import annotations

from typing import Literal

ErrorKind = Literal["connect", "timeout", "status", "protocol"]

# How a request ended, in the access log (`outcome`) and nowhere else spelled out.
Outcome = Literal[
    "ok",
    "client_gone",
    "bad_request",
    "unauthorized",
    "rate_limited",
    "upstream_error",
    "no_backend",
    "queue_full",
    "client_stalled",
    "shutting_down",
    "timeout",
    "forbidden",
    "client_timeout",
]


class PollexError(Exception):
    status = 500
    outcome: Outcome = "upstream_error"
    code: str | None = None
    # Seconds a client should wait before asking again (`Retry-After`), when known.
    retry_after_s: float | None = None

    @property
    def message(self) -> str:
        return str(self)


class BadRequest(PollexError):
    status = 400
    outcome: Outcome = "bad_request"


class UnknownModel(BadRequest):
    pass


class ModelNotFound(PollexError):
    status = 404
    outcome: Outcome = "bad_request"
    code = "model_not_found"


class Unauthorized(PollexError):
    status = 401
    outcome: Outcome = "unauthorized"
    code = "invalid_api_key"


class Forbidden(PollexError):
    status = 403
    outcome: Outcome = "forbidden"


class BodyTimeout(PollexError):
    """The client did not send its whole body in time; the connection is closed after it."""

    status = 408
    outcome: Outcome = "client_timeout"


class UnsupportedMediaType(PollexError):
    status = 415
    outcome: Outcome = "bad_request"


class RateLimited(PollexError):
    status = 429
    outcome: Outcome = "rate_limited"
    code = "rate_limit_exceeded"

    def __init__(self, retry_after_s: float) -> None:
        super().__init__("rate limit exceeded")
        self.retry_after_s = retry_after_s


class UpstreamError(PollexError):
    status = 502

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


class ClientStalled(PollexError):
    """The client stopped reading, so pollex stopped reading the upstream: the upstream did
    nothing wrong. 499 is nginx's "client closed request"."""

    status = 499
    outcome: Outcome = "client_stalled"

    def __init__(self) -> None:
        super().__init__("the client stopped reading")


class StreamBroken(PollexError):
    """The upstream failed mid-answer; the client already has part of it."""

    def __init__(self, cause: UpstreamError) -> None:
        super().__init__(cause.message)
        self.cause = cause
        self.status = cause.status


class NoAdapterServed(PollexError):
    status = 503
    outcome: Outcome = "no_backend"

    def __init__(self, failures: list[tuple[str, str]], retry_after_s: float) -> None:
        detail = "; ".join(f"{name}: {reason}" for name, reason in failures)
        super().__init__(
            f"no backend could serve the request ({detail})"
            if detail
            else "no backend could serve the request"
        )
        self.failures = failures
        self.retry_after_s = retry_after_s


class QueueFull(PollexError):
    status = 503
    outcome: Outcome = "queue_full"

    def __init__(self, retry_after_s: float | None) -> None:
        super().__init__("every backend is busy and its queue is full")
        self.retry_after_s = retry_after_s if retry_after_s is not None else 1.0


class ServerShuttingDown(PollexError):
    status = 503
    outcome: Outcome = "shutting_down"

    def __init__(self, retry_after_s: float) -> None:
        super().__init__("server shutting down")
        self.retry_after_s = retry_after_s


class RequestTimeout(PollexError):
    status = 504
    outcome: Outcome = "timeout"
