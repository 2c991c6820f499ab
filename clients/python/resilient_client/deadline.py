"""The caller's deadline, told to the gateway.

A gateway site with ``deadline { header X-Request-Timeout }`` answers at
the caller's deadline (504, ``executed maybe`` for a request it sent)
instead of working on while the caller's own timeout fires blind. The
caller says how long it will wait: what is left of its overall budget
(``deadline(seconds)``), else its ``httpx`` read timeout, a little less
(``headroom``) so that the gateway's answer arrives before the client
gives up.
"""

from __future__ import annotations

import contextvars
import time
from contextlib import contextmanager
from typing import Dict, Iterator, Optional

import httpx

#: The header the gateway reads (SPEC §14 ``deadline { header … }``).
DEADLINE_HEADER = "X-Request-Timeout"

_deadline: "contextvars.ContextVar[Optional[float]]" = contextvars.ContextVar(
    "resilient_client_deadline", default=None
)


@contextmanager
def deadline(seconds: float) -> Iterator[float]:
    """Everything inside, the caller's retries and waits included, must
    end within ``seconds``. Nested deadlines keep the earlier end. Yields
    the end, on ``time.monotonic()``'s clock."""
    end = time.monotonic() + max(0.0, float(seconds))
    outer = _deadline.get()
    if outer is not None and outer < end:
        end = outer
    token = _deadline.set(end)
    try:
        yield end
    finally:
        _deadline.reset(token)


def time_left() -> Optional[float]:
    """Seconds left of the current deadline; None outside any."""
    end = _deadline.get()
    if end is None:
        return None
    return max(0.0, end - time.monotonic())


def stamp_deadline(
    request: httpx.Request,
    *,
    headroom: float = 0.1,
    min_headroom: float = 0.05,
    header: str = DEADLINE_HEADER,
) -> None:
    """Sets ``header`` on request to the time the caller will wait, in
    seconds with millisecond precision (``4.500`` for a 5 s read timeout).

    The time is the smaller of the request's read timeout and what is
    left of the current deadline, less ``headroom`` of it (at least
    ``min_headroom`` seconds). Inside a deadline, the request's own httpx
    timeouts are also capped at what is left, so that no phase outlives
    the budget even without a gateway. A header the caller set is kept.
    """
    left = time_left()
    timeouts: Dict[str, Optional[float]] = dict(request.extensions.get("timeout") or {})
    if left is not None:
        for phase in ("connect", "read", "write", "pool"):
            t = timeouts.get(phase)
            timeouts[phase] = left if t is None else min(t, left)
        request.extensions["timeout"] = timeouts
    if header in request.headers:
        return
    read = timeouts.get("read")
    bounds = [t for t in (read, left) if t is not None]
    if not bounds:
        return  # the caller waits forever: nothing to tell
    wait = min(bounds)
    send = wait - max(min_headroom, wait * headroom)
    request.headers[header] = "%.3f" % max(0.001, send)
