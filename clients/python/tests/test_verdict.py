"""Reading a verdict, and the decision it calls for, from answers built
here as the gateway (or a provider without a gateway) sends them."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import httpx
import pytest

import resilient_client as rc


def answer(status, method="POST", headers=None, problem=None, body=b""):
    h = dict(headers or {})
    if problem is not None:
        h["Content-Type"] = "application/problem+json"
        body = json.dumps(problem).encode()
    return httpx.Response(status, headers=h, content=body, request=httpx.Request(method, "http://gw/labels?secret=1"))


def decide(response):
    err = rc.error_for_response(response)
    return (type(err).__name__, err.retryable) if err else ("ok", None)


def test_headers_win_and_problem_fills_the_rest():
    v = rc.read_verdict(
        answer(
            504,
            headers={"X-Resilient-Outcome": "total_timeout", "X-Resilient-Executed": "maybe", "X-Resilient-Attempts": "1"},
            problem={"outcome": "read_timeout", "executed": "no", "idempotency": "new", "upstream": "10.0.0.1:443", "retry_after": 3},
        )
    )
    assert (v.outcome, v.executed, v.attempts) == ("total_timeout", "maybe", 1)
    assert (v.idempotency, v.upstream, v.retry_after) == ("new", "10.0.0.1:443", 3.0)
    assert v.source == "headers" and not v.derived


def test_problem_alone_is_a_verdict():
    v = rc.read_verdict(answer(409, problem={"status": 409, "outcome": "key_conflict", "executed": "no", "retry_after": 1, "attempts": 0}))
    assert (v.source, v.outcome, v.executed, v.retry_after) == ("problem", "key_conflict", "no", 1.0)
    assert decide(answer(409, problem={"outcome": "key_conflict", "executed": "no", "retry_after": 1})) == ("ExternalAPIUnavailableError", True)


def test_placeholder_names_are_not_verdicts():
    # a gateway without a placeholder leaves its name in header_down
    v = rc.read_verdict(answer(200, headers={"X-Resilient-Executed": "{http.resilient.executed}", "X-Resilient-Attempts": "{http.resilient.attempts}", "X-Resilient-Idempotency": ""}))
    assert (v.executed, v.attempts, v.idempotency, v.source) == (None, None, None, "none")


def test_executed_from_an_older_gateways_outcome():
    v = rc.read_verdict(answer(502, headers={"X-Resilient-Outcome": "reset"}))
    assert (v.executed, v.derived) == ("maybe", True)
    v = rc.read_verdict(answer(502, headers={"X-Resilient-Outcome": "connect_error"}))
    assert (v.executed, v.derived) == ("no", True)
    v = rc.read_verdict(answer(503, headers={"X-Resilient-Outcome": "upstream_status"}))
    assert v.executed == "no"
    replay = answer(502, headers={"Idempotent-Replayed": "true", "X-Resilient-Outcome": "replayed"}, problem={"outcome": "reset"})
    v = rc.read_verdict(replay)
    assert (v.executed, v.replayed) == ("maybe", True)
    assert decide(replay) == ("ExternalAPIOutcomeUnknownError", False)


def test_retry_after_as_a_date():
    later = datetime.now(timezone.utc) + timedelta(seconds=30)
    ra = rc.parse_retry_after(format_datetime(later, usegmt=True))
    assert 25 <= ra <= 30
    assert rc.parse_retry_after("soon") is None
    assert rc.parse_retry_after("7") == 7.0


@pytest.mark.parametrize(
    "status, method, headers, want",
    [
        (200, "POST", {"X-Resilient-Executed": "yes"}, ("ok", None)),
        (503, "POST", {"X-Resilient-Executed": "no", "Retry-After": "2"}, ("ExternalAPIUnavailableError", True)),
        (429, "POST", {"X-Resilient-Executed": "no"}, ("ExternalAPIUnavailableError", True)),
        (504, "POST", {"X-Resilient-Executed": "no", "X-Resilient-Outcome": "total_timeout"}, ("ExternalAPITimeoutError", True)),
        (400, "POST", {"X-Resilient-Executed": "no", "X-Resilient-Outcome": "key_invalid"}, ("ExternalAPIBadResponseError", False)),
        (422, "POST", {"X-Resilient-Executed": "no", "X-Resilient-Outcome": "key_mismatch"}, ("ExternalAPIBadResponseError", False)),
        (504, "POST", {"X-Resilient-Executed": "maybe", "X-Resilient-Idempotency": "new"}, ("ExternalAPIOutcomeUnknownError", True)),
        (504, "POST", {"X-Resilient-Executed": "maybe"}, ("ExternalAPIOutcomeUnknownError", False)),
        (504, "POST", {"X-Resilient-Executed": "maybe", "Idempotent-Replayed": "true"}, ("ExternalAPIOutcomeUnknownError", False)),
        (504, "GET", {"X-Resilient-Executed": "maybe"}, ("ExternalAPITimeoutError", True)),
        (502, "PUT", {"X-Resilient-Executed": "maybe", "X-Resilient-Outcome": "reset"}, ("ExternalAPIUnavailableError", True)),
        (409, "POST", {"X-Resilient-Executed": "yes", "X-Resilient-Outcome": "key_conflict"}, ("ExternalAPIOutcomeUnknownError", False)),
        (409, "POST", {"X-Resilient-Executed": "yes", "X-Resilient-Outcome": "upstream_status"}, ("ExternalAPIBadResponseError", False)),
        (500, "POST", {"X-Resilient-Executed": "yes"}, ("ExternalAPIOutcomeUnknownError", False)),
        (500, "GET", {"X-Resilient-Executed": "yes"}, ("ExternalAPIBadResponseError", False)),
        (404, "GET", {"X-Resilient-Executed": "yes"}, ("ExternalAPIBadResponseError", False)),
        # no verdict at all: never call failed what may have executed
        (503, "POST", {}, ("ExternalAPIUnavailableError", True)),
        (502, "POST", {}, ("ExternalAPIOutcomeUnknownError", False)),
        (504, "PATCH", {}, ("ExternalAPIOutcomeUnknownError", False)),
        (504, "GET", {}, ("ExternalAPITimeoutError", True)),
        (400, "POST", {}, ("ExternalAPIBadResponseError", False)),
    ],
)
def test_decision_table(status, method, headers, want):
    assert decide(answer(status, method, headers)) == want


def test_errors_carry_the_verdict_and_no_query_string():
    err = rc.error_for_response(answer(503, headers={"X-Resilient-Executed": "no", "X-Resilient-Outcome": "breaker_open", "Retry-After": "4", "X-Resilient-Attempts": "0"}))
    assert isinstance(err, rc.ExternalAPIUnavailableError)
    assert (err.status, err.outcome, err.executed, err.attempts, err.retry_after) == (503, "breaker_open", "no", 0, 4.0)
    assert "secret" not in str(err) and "breaker_open" in str(err)


@pytest.mark.parametrize(
    "exc, method, want",
    [
        (httpx.ConnectError, "POST", ("ExternalAPIUnavailableError", True)),
        (httpx.ConnectTimeout, "POST", ("ExternalAPITimeoutError", True)),
        (httpx.PoolTimeout, "POST", ("ExternalAPITimeoutError", True)),
        (httpx.ReadTimeout, "POST", ("ExternalAPIOutcomeUnknownError", False)),
        (httpx.ReadTimeout, "GET", ("ExternalAPITimeoutError", True)),
        (httpx.WriteTimeout, "PATCH", ("ExternalAPIOutcomeUnknownError", False)),
        (httpx.RemoteProtocolError, "POST", ("ExternalAPIOutcomeUnknownError", False)),
        (httpx.ReadError, "DELETE", ("ExternalAPIUnavailableError", True)),
    ],
)
def test_no_answer(exc, method, want):
    req = httpx.Request(method, "http://gw/labels")
    err = rc.error_for_exception(exc("boom", request=req), req)
    assert (type(err).__name__, err.retryable) == want
    assert err.verdict.source == "client" and err.status is None


def test_undecodable_answer_to_a_post_is_unknown():
    with pytest.raises(rc.ExternalAPIOutcomeUnknownError):
        rc.decode_json(answer(200, body=b"<html>"))
    with pytest.raises(rc.ExternalAPIBadResponseError):
        rc.decode_json(answer(200, "GET", body=b"<html>"))
    assert rc.decode_json(answer(200, body=b'{"label":"L1"}')) == {"label": "L1"}


def test_a_released_key_means_nothing_was_done():
    # an older gateway: its deadline ended the request between attempts
    v = rc.read_verdict(answer(504, headers={"X-Resilient-Outcome": "total_timeout", "X-Resilient-Idempotency": "released"}))
    assert (v.executed, v.derived) == ("no", True)
    assert decide(answer(504, headers={"X-Resilient-Outcome": "total_timeout", "X-Resilient-Idempotency": "released"})) == ("ExternalAPITimeoutError", True)


def test_an_operation_that_may_have_acted_stays_unknown():
    """After a 504 "may have acted", the repeat's 409 (the first is still
    in flight) says nothing was done by the repeat only: the operation is
    reported unknown, still repeatable; a definitive answer ends that."""
    from resilient_client.keys import current_operation

    timed_out = rc.error_for_response(answer(504, headers={"X-Resilient-Executed": "maybe", "X-Resilient-Idempotency": "new"}))
    in_flight = rc.error_for_response(answer(409, headers={"X-Resilient-Executed": "no", "Retry-After": "1"}))
    refused = rc.error_for_response(answer(400, headers={"X-Resilient-Executed": "yes", "Idempotent-Replayed": "true"}))
    with rc.operation():
        op = current_operation()
        assert op.settle(in_flight) is in_flight  # nothing may have acted yet
        assert op.settle(timed_out) is timed_out
        later = op.settle(in_flight)
        assert isinstance(later, rc.ExternalAPIOutcomeUnknownError)
        assert later.retryable and later.retry_after == 1.0 and later.earlier is timed_out
        assert op.settle(refused) is refused  # the first one's real answer
