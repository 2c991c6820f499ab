"""The exceptions an application sees, each carrying the gateway's verdict.

The class says what the application may conclude; ``retryable`` says
whether repeating the same request (with the same Idempotency-Key) is
both safe and useful. The two agree: ``ExternalAPITimeoutError`` and
``ExternalAPIUnavailableError`` are raised only when a repeat is safe, so
even a Tenacity predicate written for the classic hierarchy
(``retry_if_exception_type((ExternalAPITimeoutError,
ExternalAPIUnavailableError))``) never repeats a request the upstream may
have acted on. ``ExternalAPIOutcomeUnknownError`` is the one whose
``retryable`` can be true or false: true when the gateway keeps the
request's key and a repeat with it gets the first request's real answer.
"""

from __future__ import annotations

from typing import Optional

import httpx

from .verdict import Verdict


class ExternalAPIError(Exception):
    """A call to an external API did not succeed.

    Every instance carries the ``verdict`` it was decided from, the
    ``response`` when there was one, and whether a repeat of the same
    request is safe and useful (``retryable``).
    """

    def __init__(
        self,
        message: str,
        *,
        verdict: Verdict,
        retryable: bool,
        request: Optional[httpx.Request] = None,
        response: Optional[httpx.Response] = None,
    ) -> None:
        super().__init__(message)
        self.verdict = verdict
        self.retryable = retryable
        self.request = request
        self.response = response

    @property
    def status(self) -> Optional[int]:
        """The status of the answer; None when no answer came."""
        return self.verdict.status

    @property
    def outcome(self) -> Optional[str]:
        """The gateway's outcome (``rate_limited``, ``reset``, …), or the
        client's own (``read_timeout``, ``connect_error``, …) when no
        answer came."""
        return self.verdict.outcome

    @property
    def executed(self) -> Optional[str]:
        """``no``, ``maybe`` or ``yes``: what may be assumed about the
        upstream; None when the answer did not say."""
        return self.verdict.executed

    @property
    def attempts(self) -> Optional[int]:
        """Attempts the gateway made for this request."""
        return self.verdict.attempts

    @property
    def retry_after(self) -> Optional[float]:
        """Seconds to wait before a repeat can succeed, when the answer
        said so."""
        return self.verdict.retry_after

    @property
    def idempotency(self) -> Optional[str]:
        """What the gateway did with the request's Idempotency-Key
        (``new``, ``released``, ``replayed``, ``conflict``, ``mismatch``,
        ``invalid``); None when it was not managed."""
        return self.verdict.idempotency

    @property
    def upstream(self) -> Optional[str]:
        """The upstream the gateway called."""
        return self.verdict.upstream

    @property
    def replayed(self) -> bool:
        """Whether the answer was the gateway's replay of an earlier one."""
        return self.verdict.replayed


class ExternalAPITimeoutError(ExternalAPIError):
    """The call timed out in a way that a repeat is safe: nothing was
    done upstream, or the request is idempotent by its method."""


class ExternalAPIUnavailableError(ExternalAPIError):
    """The upstream (or the gateway in front of it) cannot take the call
    now and did nothing with it: refused, down, rate limited, a key in
    flight. Repeat after ``retry_after`` when it is set."""


class ExternalAPIBadResponseError(ExternalAPIError):
    """A final answer: the request was refused (4xx, a key reused with
    another body, an invalid key), the provider answered an error a
    repeat would not change, or its answer could not be decoded. Fix the
    request; do not repeat it as is."""


class ExternalAPIOutcomeUnknownError(ExternalAPIError):
    """The upstream may have acted and its answer is not known: request
    bytes went out and no answer came, the gateway replays such a
    no-answer, or the upstream acted and its answer is lost. Never
    report this as a failure: reconcile with the provider (or, when
    ``retryable``, repeat with the same Idempotency-Key)."""

    #: When this attempt itself did nothing (a 409 while the first is in
    #: flight, an open breaker), the earlier attempt of the same
    #: operation that may have acted.
    earlier: "Optional[ExternalAPIOutcomeUnknownError]" = None
