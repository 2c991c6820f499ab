"""From an answer (or its absence) to what the application does.

The table follows the gateway's contract (status x ``executed``):

=============================================  ==============================
answer                                         decision
=============================================  ==============================
2xx / 3xx                                      success (possibly a replay)
executed=no; 408/409/425/429 or 5xx            Unavailable / Timeout; repeat
                                               with the same key, after
                                               Retry-After when given
executed=no; other 4xx (bad or reused key)     BadResponse; final
executed=maybe, replayed                       OutcomeUnknown; final
executed=maybe, unsafe method                  OutcomeUnknown; repeat with
                                               the same key only when the
                                               gateway keeps it
                                               (idempotency=new)
executed=maybe, idempotent method              Timeout / Unavailable; repeat
executed=yes, 409 key_conflict                 OutcomeUnknown (acted, answer
                                               not kept); final
executed=yes, 5xx, unsafe method               OutcomeUnknown; final
executed=yes, other                            BadResponse; final
=============================================  ==============================

An answer **without any verdict** (a direct call, a site that sends no
``X-Resilient-*`` headers and no problem document) is judged by the one
rule that matters: never report as failed what may have executed. A
status by which the upstream says it did nothing (408, 425, 429, 503) is
Unavailable and repeated; another 5xx to an unsafe request (POST, PATCH)
may come from a proxy that timed out after sending it, so it is
OutcomeUnknown and not repeated; other 5xx to idempotent requests are
repeated; other 4xx are final. When no answer came at all, an error
before anything was sent (connect, pool wait) is repeated, and one after
the request went out (read or write timeout, a dropped connection) is
OutcomeUnknown for an unsafe request, a repeatable timeout for an
idempotent one.
"""

from __future__ import annotations

from typing import Any, Optional, Type

import httpx

from .errors import (
    ExternalAPIBadResponseError,
    ExternalAPIError,
    ExternalAPIOutcomeUnknownError,
    ExternalAPITimeoutError,
    ExternalAPIUnavailableError,
)
from .verdict import RELEASING_STATUSES, Verdict, read_verdict

#: Methods whose repeat has the effect of one request (RFC 9110 §9.2.2).
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})

#: 4xx statuses that mean "not now" when nothing was done upstream.
_LATER_4XX = frozenset({408, 409, 425, 429})


def raise_for_verdict(response: httpx.Response) -> httpx.Response:
    """Returns the response when it is a success (2xx, 3xx), else raises
    the ExternalAPIError its verdict calls for."""
    err = error_for_response(response)
    if err is not None:
        raise err
    return response


def error_for_response(response: httpx.Response) -> Optional[ExternalAPIError]:
    """The ExternalAPIError a response calls for; None for a success."""
    if response.status_code < 400:
        return None
    v = read_verdict(response)
    method = response.request.method if _has_request(response) else "POST"
    cls, retryable = _decide(v, method)
    return cls(
        _message(method, response.request.url if _has_request(response) else None, v),
        verdict=v,
        retryable=retryable,
        request=response.request if _has_request(response) else None,
        response=response,
    )


def _decide(v: Verdict, method: str) -> "tuple[Type[ExternalAPIError], bool]":
    s = v.status or 0
    unsafe = method.upper() not in IDEMPOTENT_METHODS
    timeout = s == 504 or (v.outcome or "").endswith("_timeout")
    later = ExternalAPITimeoutError if timeout else ExternalAPIUnavailableError
    if v.executed is None:
        if s in RELEASING_STATUSES:
            return ExternalAPIUnavailableError, True
        if s >= 500:
            if unsafe:
                return ExternalAPIOutcomeUnknownError, False
            return later, True
        return ExternalAPIBadResponseError, False
    if v.executed == "no":
        if s >= 500 or s in _LATER_4XX:
            return later, True
        return ExternalAPIBadResponseError, False
    if v.executed == "maybe":
        if v.replayed:
            return ExternalAPIOutcomeUnknownError, False
        if unsafe:
            return ExternalAPIOutcomeUnknownError, v.idempotency == "new"
        return later, True
    # executed == "yes"
    if v.outcome == "key_conflict":
        return ExternalAPIOutcomeUnknownError, False
    if s >= 500 and unsafe:
        return ExternalAPIOutcomeUnknownError, False
    return ExternalAPIBadResponseError, False


def error_for_exception(exc: httpx.HTTPError, request: Optional[httpx.Request] = None) -> ExternalAPIError:
    """The ExternalAPIError for a call that got no answer: an httpx
    transport error. What was sent decides, as for the gateway's own
    outcomes."""
    if request is None:
        try:
            request = exc.request
        except RuntimeError:
            request = None
    method = request.method if request is not None else "POST"
    unsafe = method.upper() not in IDEMPOTENT_METHODS
    if isinstance(exc, httpx.ConnectTimeout):
        outcome, executed = "connect_timeout", "no"
    elif isinstance(exc, httpx.PoolTimeout):
        outcome, executed = "pool_timeout", "no"
    elif isinstance(exc, httpx.ConnectError):
        outcome, executed = "connect_error", "no"
    elif isinstance(exc, httpx.WriteTimeout):
        outcome, executed = "write_timeout", "maybe"
    elif isinstance(exc, httpx.TimeoutException):
        outcome, executed = "read_timeout", "maybe"
    elif isinstance(exc, (httpx.NetworkError, httpx.RemoteProtocolError)):
        outcome, executed = "reset", "maybe"
    elif isinstance(exc, httpx.DecodingError):
        # the answer came, its body could not be decoded
        outcome, executed = "undecodable", "yes"
    else:
        # the request could not be built or sent at all (a bad URL, an
        # unsupported scheme): nothing went out, and a repeat fails alike
        outcome, executed = "client_error", "no"
    v = Verdict(status=None, outcome=outcome, executed=executed, source="client")
    if executed == "no":
        if outcome == "client_error":
            cls, retryable = ExternalAPIBadResponseError, False
        elif outcome.endswith("_timeout"):
            cls, retryable = ExternalAPITimeoutError, True
        else:
            cls, retryable = ExternalAPIUnavailableError, True
    elif executed == "maybe":
        if unsafe:
            cls, retryable = ExternalAPIOutcomeUnknownError, False
        elif outcome.endswith("_timeout"):
            cls, retryable = ExternalAPITimeoutError, True
        else:
            cls, retryable = ExternalAPIUnavailableError, True
    else:
        cls = ExternalAPIOutcomeUnknownError if unsafe else ExternalAPIBadResponseError
        retryable = False
    err = cls(
        _message(method, request.url if request is not None else None, v) + ": " + type(exc).__name__,
        verdict=v,
        retryable=retryable,
        request=request,
    )
    err.__cause__ = exc
    return err


def decode_json(response: httpx.Response) -> Any:
    """The JSON of a successful answer. An answer that cannot be decoded
    is ExternalAPIBadResponseError, except to an unsafe request, whose
    upstream did act: ExternalAPIOutcomeUnknownError."""
    try:
        return response.json()
    except (ValueError, httpx.DecodingError) as exc:
        method = response.request.method if _has_request(response) else "POST"
        v = Verdict(
            status=response.status_code,
            outcome="undecodable",
            executed="yes",
            replayed=response.headers.get("Idempotent-Replayed", "").lower() == "true",
            source="client",
        )
        cls = (
            ExternalAPIOutcomeUnknownError
            if method.upper() not in IDEMPOTENT_METHODS
            else ExternalAPIBadResponseError
        )
        err = cls(
            _message(method, response.request.url if _has_request(response) else None, v)
            + ": the answer is not JSON",
            verdict=v,
            retryable=False,
            request=response.request if _has_request(response) else None,
            response=response,
        )
        raise err from exc


def _has_request(response: httpx.Response) -> bool:
    try:
        response.request
    except RuntimeError:
        return False
    return True


def _message(method: str, url: Optional[httpx.URL], v: Verdict) -> str:
    # the path only: no query strings (they may carry secrets)
    where = f"{method} {url.copy_with(query=None, fragment=None)}" if url is not None else method
    parts = [str(v.status) if v.status is not None else "no answer"]
    if v.outcome:
        parts.append(v.outcome)
    said = []
    if v.executed:
        said.append(f"executed {v.executed}" + (" (from the outcome)" if v.derived else ""))
    if v.attempts is not None:
        said.append(f"attempts {v.attempts}")
    if v.retry_after is not None:
        said.append(f"retry after {v.retry_after:g}s")
    if v.replayed:
        said.append("replayed")
    text = f"{where}: {' '.join(parts)}"
    if said:
        text += f" ({', '.join(said)})"
    return text
