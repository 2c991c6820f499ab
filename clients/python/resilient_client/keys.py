"""One Idempotency-Key per logical operation, kept across its retries.

A key names an operation ("create this shipping label"), not an HTTP
request: every repeat of the operation, after a timeout, a 503 or a
``Retry-After``, must carry the same key, or the gateway (and a provider
that honours keys) sees a new operation and may execute it twice. A new
key is for a new operation only.

``operation()`` opens an operation for everything inside it; the request
hook (``GatewayHook``) puts its key on every POST and PATCH that has none.
``idempotent`` does the same for each call of a function: put it outside
the retry decorator, so that the retries share the call's key.

An operation also remembers whether one of its attempts may have acted:
after that, a later attempt that did nothing does not make the operation
"not done" (``call_once`` reports it as OutcomeUnknown).
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import uuid
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional, TypeVar

import httpx

from .errors import ExternalAPIError, ExternalAPIOutcomeUnknownError

#: The header of draft-ietf-httpapi-idempotency-key-header.
KEY_HEADER = "Idempotency-Key"

#: Methods that get the current operation's key (the gateway's
#: ``idempotency { methods }`` default).
KEY_METHODS = frozenset({"POST", "PATCH"})



class _Operation:
    """The state of one logical operation: its key, and the first error
    after which the upstream may have acted (until a definitive answer,
    the operation's outcome stays unknown whatever later attempts say)."""

    __slots__ = ("key", "unknown")

    def __init__(self, key: str) -> None:
        self.key = key
        self.unknown: Optional[ExternalAPIOutcomeUnknownError] = None

    def settle(self, err: ExternalAPIError) -> ExternalAPIError:
        """The error to report for an attempt of this operation.

        After an attempt that may have acted, a later attempt's "nothing
        was done" (a 409 while the first is still in flight, an open
        breaker, a refused connection) speaks of that attempt only: the
        operation is reported OutcomeUnknown, repeatable as the later
        error is. Only an answer from the upstream (``executed=yes``, or
        a replay) is definitive.
        """
        if isinstance(err, ExternalAPIOutcomeUnknownError):
            if self.unknown is None:
                self.unknown = err
            return err
        if self.unknown is None or err.executed == "yes" or err.replayed:
            return err
        unknown = ExternalAPIOutcomeUnknownError(
            f"{err}; an earlier attempt may have acted ({self.unknown})",
            verdict=err.verdict,
            retryable=err.retryable,
            request=err.request,
            response=err.response,
        )
        unknown.earlier = self.unknown
        unknown.__cause__ = err
        return unknown


_op: "contextvars.ContextVar[Optional[_Operation]]" = contextvars.ContextVar(
    "resilient_client_operation", default=None
)

F = TypeVar("F", bound=Callable[..., Any])


def new_key() -> str:
    """A fresh key: a random UUID, a valid bare key for the gateway."""
    return str(uuid.uuid4())


@contextmanager
def operation(key: Optional[str] = None) -> Iterator[str]:
    """One logical operation: everything inside it shares one key (``key``,
    or a new one). Yields the key, for the caller to store with its own
    record of the operation (and to reconcile an unknown outcome)."""
    op = _Operation(key if key is not None else new_key())
    token = _op.set(op)
    try:
        yield op.key
    finally:
        _op.reset(token)


def current_key() -> Optional[str]:
    """The key of the current operation; None outside any."""
    op = _op.get()
    return op.key if op is not None else None


def current_operation() -> Optional[_Operation]:
    """The current operation's state; None outside any."""
    return _op.get()


def idempotent(fn: F) -> F:
    """Runs each call of ``fn`` (sync or async) as one operation, with a
    new key. Place it outside a retry decorator::

        @idempotent
        @retry(...)
        async def create_label(order): ...
    """
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            with operation():
                return await fn(*args, **kwargs)

        return run_async  # type: ignore[return-value]

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        with operation():
            return fn(*args, **kwargs)

    return run  # type: ignore[return-value]


def stamp_key(
    request: httpx.Request,
    *,
    header: str = KEY_HEADER,
    methods: "frozenset[str]" = KEY_METHODS,
) -> None:
    """Puts the current operation's key on request, when its method is in
    ``methods`` and it carries no key of its own."""
    op = _op.get()
    if op is None or request.method.upper() not in methods or header in request.headers:
        return
    request.headers[header] = op.key
