"""Tenacity pieces that follow the gateway's verdict (optional: needs the
``tenacity`` package)::

    from tenacity import retry, stop_after_attempt
    from resilient_client import call_once, idempotent
    from resilient_client.tenacity import retry_if_gateway_says, wait_gateway

    @idempotent                      # one Idempotency-Key per call ...
    @retry(stop=stop_after_attempt(3), retry=retry_if_gateway_says(),
           wait=wait_gateway(), reraise=True)   # ... kept across these retries
    async def create_label(order):
        return (await call_once(client, "POST", "/labels", json=order)).json()
"""

from __future__ import annotations

from typing import Any, Optional

import tenacity
from tenacity.retry import retry_base
from tenacity.wait import wait_base

from .deadline import time_left
from .errors import ExternalAPIError


def _error(retry_state: "tenacity.RetryCallState") -> Optional[ExternalAPIError]:
    outcome = retry_state.outcome
    if outcome is None or not outcome.failed:
        return None
    exc = outcome.exception()
    return exc if isinstance(exc, ExternalAPIError) else None


class retry_if_gateway_says(retry_base):
    """Retries an attempt that raised an ExternalAPIError whose verdict
    says a repeat is safe and useful (``retryable``), and only those:
    never a final answer, never an unknown outcome the gateway cannot
    resolve, never an exception that is not the gateway's.

    It also declines when the answer's ``Retry-After`` is longer than
    ``max_retry_after``, or would end past the current ``deadline``.
    """

    def __init__(self, max_retry_after: Optional[float] = 60.0) -> None:
        self.max_retry_after = max_retry_after

    def __call__(self, retry_state: "tenacity.RetryCallState") -> bool:
        err = _error(retry_state)
        if err is None or not err.retryable:
            return False
        ra = err.retry_after
        if ra is not None:
            if self.max_retry_after is not None and ra > self.max_retry_after:
                return False
            left = time_left()
            if left is not None and ra >= left:
                return False
        return True


class wait_gateway(wait_base):
    """Waits the answer's ``Retry-After`` when it gave one, else what
    ``fallback`` says (default: exponential, 0.5 s doubling up to 5 s)."""

    def __init__(self, fallback: Optional[Any] = None) -> None:
        self.fallback = fallback if fallback is not None else tenacity.wait_exponential(multiplier=0.5, min=0.5, max=5)

    def __call__(self, retry_state: "tenacity.RetryCallState") -> float:
        err = _error(retry_state)
        if err is not None and err.retry_after is not None:
            return err.retry_after
        return self.fallback(retry_state)
