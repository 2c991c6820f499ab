"""The gateway's verdict on one answer: what happened, and whether the
upstream may have acted.

The verdict is read from the answer itself: the ``X-Resilient-*``
headers a gateway site sends (``header_down`` and its ``handle_errors``),
and the RFC 9457 ``application/problem+json`` body of every answer the
gateway writes itself, for when a hop stripped the headers. Nothing here
guesses from the status code; ``classify`` decides what to do when the
answer carries no verdict at all.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from datetime import datetime, timezone
from typing import Any, Mapping, Optional

import httpx

#: Values of ``executed``: what the caller may assume about the upstream.
EXECUTED_VALUES = ("no", "maybe", "yes")

#: Outcomes (and idempotency verdicts) are lowercase words with
#: underscores. Anything else in those headers is not a verdict: e.g. a
#: placeholder a gateway of another version does not know, which Caddy's
#: ``header_down`` leaves as its literal name (``{http.resilient.executed}``).
_WORD = re.compile(r"^[a-z][a-z_]*$")

#: Outcomes after which nothing reached the upstream, or the gateway
#: answered by itself before sending (SPEC §5, §13).
_NOTHING_SENT = frozenset(
    {
        "connect_error",
        "connect_timeout",
        "tls_error",
        "tls_timeout",
        "breaker_open",
        "pool_timeout",
        "rate_limited",
        "key_invalid",
        "key_mismatch",
    }
)

#: Outcomes where request bytes may have gone out and no answer came.
NO_ANSWER = frozenset(
    {
        "reset",
        "write_timeout",
        "read_timeout",
        "attempt_timeout",
        "total_timeout",
        "canceled",
    }
)

#: Statuses by which an upstream says it did nothing (RFC 9110 §15.5.9,
#: RFC 8470, RFC 6585, RFC 9110 §15.6.4): the gateway releases the key.
RELEASING_STATUSES = frozenset({408, 425, 429, 503})


@dataclass(frozen=True)
class Verdict:
    """What one answer says about the call that produced it.

    ``source`` says where the verdict came from: ``"headers"`` (the
    gateway's ``X-Resilient-*`` headers), ``"problem"`` (only the
    problem+json body), ``"client"`` (no answer came: built from the
    ``httpx`` error) or ``"none"`` (an answer without any verdict: a
    direct call, or a site that sends none).

    ``derived`` is true when ``executed`` was not in the answer and was
    worked out from its ``outcome`` (a gateway that predates the
    ``executed`` member), always on the side of "may have acted".
    """

    status: Optional[int]
    outcome: Optional[str] = None
    executed: Optional[str] = None
    attempts: Optional[int] = None
    retry_after: Optional[float] = None
    idempotency: Optional[str] = None
    upstream: Optional[str] = None
    replayed: bool = False
    source: str = "none"
    derived: bool = False

    @property
    def known(self) -> bool:
        """Whether the answer said whether the upstream may have acted."""
        return self.executed is not None


def read_verdict(response: httpx.Response) -> Verdict:
    """Reads the gateway's verdict from a response.

    Headers come first; members of a problem+json body fill what the
    headers do not say. The body is parsed only when it is a problem
    document and has already been read (a streamed answer's body is left
    alone: its headers decide).
    """
    h = response.headers
    outcome = _word(h.get("X-Resilient-Outcome"))
    executed = _executed(h.get("X-Resilient-Executed"))
    attempts = _count(h.get("X-Resilient-Attempts"))
    idempotency = _word(h.get("X-Resilient-Idempotency"))
    upstream = _text(h.get("X-Resilient-Upstream"))
    retry_after = parse_retry_after(h.get("Retry-After"))
    from_headers = outcome is not None or executed is not None

    problem = _problem(response)
    from_problem = False
    body_outcome = None
    if problem is not None:
        body_outcome = _word(problem.get("outcome"))
        body_executed = _executed(problem.get("executed"))
        from_problem = body_outcome is not None or body_executed is not None
        if outcome is None:
            outcome = body_outcome
        if executed is None:
            executed = body_executed
        if attempts is None:
            attempts = _count(problem.get("attempts"))
        if idempotency is None:
            idempotency = _word(problem.get("idempotency"))
        if upstream is None:
            upstream = _text(problem.get("upstream"))
        if retry_after is None:
            retry_after = _seconds(problem.get("retry_after"))

    replayed = (
        h.get("Idempotent-Replayed", "").strip().lower() == "true"
        or outcome == "replayed"
        or idempotency == "replayed"
    )
    derived = False
    if executed is None and outcome is not None:
        executed = _executed_from_outcome(
            outcome, body_outcome, idempotency, response.status_code, retry_after
        )
        derived = executed is not None
    if from_headers:
        source = "headers"
    elif from_problem:
        source = "problem"
    else:
        source = "none"
    return Verdict(
        status=response.status_code,
        outcome=outcome,
        executed=executed,
        attempts=attempts,
        retry_after=retry_after,
        idempotency=idempotency,
        upstream=upstream,
        replayed=replayed,
        source=source,
        derived=derived,
    )


def _executed_from_outcome(
    outcome: str,
    body_outcome: Optional[str],
    idempotency: Optional[str],
    status: int,
    retry_after: Optional[float],
) -> Optional[str]:
    """What an outcome implies about the upstream, for an answer without
    ``executed``. When the outcome cannot tell (a reset may come before or
    after the request's bytes went out), the answer is "maybe"."""
    if idempotency == "released":
        # the gateway freed the key: the upstream provably did nothing
        return "no"
    if outcome in ("ok", "upstream_status"):
        return "no" if status in RELEASING_STATUSES else "yes"
    if outcome in _NOTHING_SENT:
        return "no"
    if outcome == "key_conflict":
        # in flight (try later) or used (its answer was not kept)
        return "no" if retry_after is not None else "yes"
    if outcome == "replayed":
        # a replay of a kept no-answer is the gateway's own problem
        # document naming the outcome it kept
        return "maybe" if body_outcome in NO_ANSWER else "yes"
    if outcome in NO_ANSWER or outcome == "stale":
        return "maybe"
    return None


def parse_retry_after(value: Optional[str], now: Optional[datetime] = None) -> Optional[float]:
    """Seconds from a Retry-After value: delta-seconds or an HTTP-date
    (RFC 9110 §10.2.3). None when absent or not understood."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if value.isdigit():
        return float(int(value))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    now = now or datetime.now(timezone.utc)
    return max(0.0, (when - now).total_seconds())


def _problem(response: httpx.Response) -> Optional[Mapping[str, Any]]:
    ctype = response.headers.get("Content-Type", "")
    if ctype.split(";", 1)[0].strip().lower() != "application/problem+json":
        return None
    try:
        body = response.content
    except httpx.ResponseNotRead:
        return None
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _word(value: Any) -> Optional[str]:
    if isinstance(value, str):
        value = value.strip()
        if _WORD.match(value):
            return value
    return None


def _executed(value: Any) -> Optional[str]:
    v = _word(value)
    return v if v in EXECUTED_VALUES else None


def _count(value: Any) -> Optional[int]:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _seconds(value: Any) -> Optional[float]:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) and value >= 0 else None
    if isinstance(value, str):
        return parse_retry_after(value)
    return None


def _text(value: Any) -> Optional[str]:
    if isinstance(value, str):
        value = value.strip()
        if value and not (value.startswith("{") and value.endswith("}")):
            return value
    return None
