"""Calling through the gateway: one attempt, and a retry loop in plain
asyncio for applications without Tenacity."""

from __future__ import annotations

import asyncio
from contextlib import ExitStack
from typing import Any, Optional

import httpx

from .classify import IDEMPOTENT_METHODS, error_for_exception, error_for_response
from .client import DEFAULT_HOOK, GatewayHook
from .deadline import deadline, time_left
from .errors import ExternalAPIError
from .keys import current_key, current_operation, operation


async def call_once(
    client: httpx.AsyncClient,
    method: str,
    url: Any,
    *,
    hook: Optional[GatewayHook] = None,
    **kwargs: Any,
) -> httpx.Response:
    """One attempt: the response when it is a success, else the
    ExternalAPIError its verdict (or the transport error) calls for.

    The request gets the deadline and the current operation's key (see
    ``GatewayHook``) whether or not the client has the hook installed.
    Within an operation, once an attempt of an unsafe request may have
    acted, later attempts that did nothing are reported as
    ExternalAPIOutcomeUnknownError too (see ``operation``).
    Other keyword arguments are ``httpx.AsyncClient.build_request``'s.
    """
    request = client.build_request(method, url, **kwargs)
    (hook or DEFAULT_HOOK).stamp(request)
    try:
        response = await client.send(request)
    except httpx.HTTPError as exc:
        err = error_for_exception(exc, request)
    else:
        err = error_for_response(response)
        if err is None:
            return response
    op = current_operation()
    if op is not None and request.method.upper() not in IDEMPOTENT_METHODS:
        err = op.settle(err)
    raise err


def backoff(failed: int, wait_min: float = 0.5, wait_max: float = 5.0) -> float:
    """The wait after the ``failed``-th attempt failed: ``wait_min``,
    doubling, at most ``wait_max``."""
    return min(wait_max, wait_min * (2 ** (failed - 1)))


async def call(
    client: httpx.AsyncClient,
    method: str,
    url: Any,
    *,
    attempts: int = 3,
    wait_min: float = 0.5,
    wait_max: float = 5.0,
    max_retry_after: Optional[float] = 60.0,
    budget: Optional[float] = None,
    key: Optional[str] = None,
    hook: Optional[GatewayHook] = None,
    **kwargs: Any,
) -> httpx.Response:
    """Calls until success or a final verdict, as one logical operation.

    - POST and PATCH carry one Idempotency-Key for all attempts: ``key``,
      or the current operation's, or a new one (see ``operation``).
    - A failed attempt is repeated only when its verdict says a repeat is
      safe and useful (``ExternalAPIError.retryable``), at most
      ``attempts`` tries in all, after the answer's ``Retry-After`` when it
      gave one, else after ``backoff`` (``wait_min`` doubling up to
      ``wait_max``). A ``Retry-After`` longer than ``max_retry_after``, or
      a wait that would end past ``budget``, ends the call with the last
      error instead.
    - ``budget`` (seconds) bounds the whole call, waits included; each
      attempt tells the gateway what is left of it (``X-Request-Timeout``).

    Returns the successful response; raises the last ExternalAPIError.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    with ExitStack() as stack:
        if budget is not None:
            stack.enter_context(deadline(budget))
        if key is not None or current_key() is None:
            stack.enter_context(operation(key))
        tried = 0
        while True:
            tried += 1
            try:
                return await call_once(client, method, url, hook=hook, **kwargs)
            except ExternalAPIError as err:
                if not err.retryable or tried >= attempts:
                    raise
                wait = err.retry_after if err.retry_after is not None else backoff(tried, wait_min, wait_max)
                if err.retry_after is not None and max_retry_after is not None and wait > max_retry_after:
                    raise
                left = time_left()
                if left is not None and wait >= left:
                    raise
                await asyncio.sleep(wait)
