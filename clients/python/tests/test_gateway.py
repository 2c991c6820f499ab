"""The library's decisions against a real gateway and a misbehaving
provider: what the application is told, and what the provider executed."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

import resilient_client as rc


def client(url, read=5.0):
    return rc.gateway_client(url, timeout=httpx.Timeout(connect=2, read=read, write=5, pool=1))


async def outcome_of(coro):
    """The response, or the ExternalAPIError, a call ends with."""
    try:
        return await coro
    except rc.ExternalAPIError as e:
        return e


def test_success(gateway, provider):
    async def main():
        async with client(gateway.egress) as c:
            key = rc.new_key()
            r = await rc.call(c, "POST", "/labels", json={"to": "Lyon"}, key=key)
            return key, r

    key, r = asyncio.run(main())
    assert r.status_code == 200
    assert r.json()["label"] == provider.labels[key][0]
    assert provider.executions[key] == 1


def test_verdict_is_read_from_the_gateway(gateway, provider):
    """A success carries the gateway's own verdict, not one worked out
    from the outcome: executed is one of the headers it sends."""

    async def main():
        async with client(gateway.egress) as c:
            return await rc.call(c, "POST", "/labels", json={})

    v = rc.read_verdict(asyncio.run(main()))
    assert (v.source, v.outcome, v.attempts, v.idempotency) == ("headers", "ok", 1, "new")
    assert v.executed == "yes" and not v.derived


def test_unavailable_is_repeated_with_the_same_key(gateway, provider):
    async def main():
        async with client(gateway.egress) as c:
            with rc.operation() as key:  # the key call() keeps for its attempts
                r = await rc.call(c, "POST", "/labels?unavailable=2", json={}, wait_min=0.01)
            return key, r

    key, r = asyncio.run(main())
    assert r.status_code == 200
    assert provider.seen[key] == 3  # two 503s and the success, all with this one key
    assert provider.executions[key] == 1


def test_retry_after_is_waited(gateway, provider):
    """A 429 with Retry-After: 1 is repeated after a second, not after the
    caller's own (here 10 ms) backoff."""

    async def main():
        async with client(gateway.egress) as c:
            key = rc.new_key()
            t0 = time.monotonic()
            r = await rc.call(c, "POST", "/labels?limited=1&retry_after=1", json={}, key=key, wait_min=0.01)
            return key, r, time.monotonic() - t0

    key, r, took = asyncio.run(main())
    assert r.status_code == 200
    assert took >= 0.9
    assert (provider.seen[key], provider.executions[key]) == (2, 1)


def test_slow_provider_is_answered_once_with_its_real_answer(gateway, provider):
    """The provider answers after 2 s; the caller waits 1.2 s per attempt.
    The gateway answers the first attempt at the caller's deadline (504,
    may have acted), carries the request on, and the repeat with the same
    key gets the provider's one real answer."""

    async def main():
        async with client(gateway.egress, read=1.2) as c:
            key = rc.new_key()
            r = await outcome_of(rc.call(c, "POST", "/labels?delay=2", json={}, key=key, wait_min=0.3))
            return key, r

    key, r = asyncio.run(main())
    assert provider.executions[key] == 1
    assert isinstance(r, httpx.Response), f"{type(r).__name__}: {r}"
    assert r.status_code == 200 and r.headers.get("Idempotent-Replayed") == "true"
    assert r.json()["label"] == provider.labels[key][0]


def test_provider_slower_than_every_attempt_is_unknown_never_failed(gateway, provider):
    """The provider answers after 3 s; the caller gives up after two
    attempts of 1.2 s. The second attempt did nothing (it waited for the
    first, or got its replay), but the first may have acted: the
    operation is reported unknown, not unavailable."""

    async def main():
        async with client(gateway.egress, read=1.2) as c:
            key = rc.new_key()
            return key, await outcome_of(rc.call(c, "POST", "/labels?delay=3", json={}, key=key, attempts=2, wait_min=0.3))

    key, err = asyncio.run(main())
    assert isinstance(err, rc.ExternalAPIOutcomeUnknownError), f"{type(err).__name__}: {err}"
    assert provider.executions[key] == 1


def test_dropped_post_is_outcome_unknown_never_failed(gateway, provider):
    """The provider executes the order and drops the connection. The
    repeat with the same key gets the gateway's replay of that no-answer:
    nothing sent twice, and the application is told "unknown"."""

    async def main():
        async with client(gateway.egress) as c:
            key = rc.new_key()
            return key, await outcome_of(rc.call(c, "POST", "/labels?drop=9", json={}, key=key, wait_min=0.01))

    key, err = asyncio.run(main())
    assert isinstance(err, rc.ExternalAPIOutcomeUnknownError), f"{type(err).__name__}: {err}"
    assert err.executed == "maybe" and err.replayed and not err.retryable
    assert (provider.seen[key], provider.executions[key]) == (1, 1)


def test_dropped_post_without_key_is_unknown_and_not_repeated(gateway, provider):
    async def main():
        async with client(gateway.egress) as c:
            # no operation: the hook puts no key on this POST
            return await outcome_of(rc.call_once(c, "POST", "/labels?drop=9", json={}, headers={"X-Op": op}))

    op = rc.new_key()
    err = asyncio.run(main())
    assert isinstance(err, rc.ExternalAPIOutcomeUnknownError), f"{type(err).__name__}: {err}"
    assert not err.retryable and err.status == 502
    assert provider.executions[op] == 1


@pytest.mark.parametrize("status", [400, 422])
def test_provider_refusal_is_final(gateway, provider, status):
    async def main():
        async with client(gateway.egress) as c:
            key = rc.new_key()
            return key, await outcome_of(rc.call(c, "POST", f"/labels?status={status}", json={}, key=key, wait_min=0.01))

    key, err = asyncio.run(main())
    assert isinstance(err, rc.ExternalAPIBadResponseError), f"{type(err).__name__}: {err}"
    assert err.status == status and not err.retryable
    assert (provider.seen[key], provider.executions[key]) == (1, 0)


def test_provider_error_after_acting_is_unknown(gateway, provider):
    async def main():
        async with client(gateway.egress) as c:
            key = rc.new_key()
            return key, await outcome_of(rc.call(c, "POST", "/labels?status=500", json={}, key=key, wait_min=0.01))

    key, err = asyncio.run(main())
    assert isinstance(err, rc.ExternalAPIOutcomeUnknownError), f"{type(err).__name__}: {err}"
    assert (provider.seen[key], provider.executions[key]) == (1, 1)


def test_key_reused_with_another_body_is_final(gateway, provider):
    async def main():
        async with client(gateway.egress) as c:
            key = rc.new_key()
            await rc.call(c, "POST", "/labels", json={"to": "Lyon"}, key=key)
            return key, await outcome_of(rc.call(c, "POST", "/labels", json={"to": "Oslo"}, key=key, wait_min=0.01))

    key, err = asyncio.run(main())
    assert isinstance(err, rc.ExternalAPIBadResponseError), f"{type(err).__name__}: {err}"
    assert (err.status, err.outcome, err.idempotency) == (422, "key_mismatch", "mismatch")
    assert provider.executions[key] == 1


def test_invalid_key_is_final(gateway, provider):
    async def main():
        async with client(gateway.egress) as c:
            return await outcome_of(rc.call(c, "POST", "/labels", json={}, key="a,b", wait_min=0.01))

    err = asyncio.run(main())
    assert isinstance(err, rc.ExternalAPIBadResponseError), f"{type(err).__name__}: {err}"
    assert (err.status, err.outcome) == (400, "key_invalid")
    assert provider.seen["a,b"] == 0


def test_nothing_sent_is_repeatable(gateway):
    """A provider that refuses connections: connect_error, then the open
    breaker's 503 with Retry-After; both "nothing was done"."""

    async def main():
        async with client(gateway.dead) as c:
            first = await outcome_of(rc.call(c, "POST", "/labels", json={}, attempts=1))
            second = await outcome_of(rc.call(c, "POST", "/labels", json={}, attempts=1))
            return first, second

    first, second = asyncio.run(main())
    assert isinstance(first, rc.ExternalAPIUnavailableError), f"{type(first).__name__}: {first}"
    assert (first.status, first.outcome, first.executed, first.retryable) == (502, "connect_error", "no", True)
    assert isinstance(second, rc.ExternalAPIUnavailableError), f"{type(second).__name__}: {second}"
    assert (second.status, second.outcome, second.executed, second.retryable) == (503, "breaker_open", "no", True)
    assert second.retry_after is not None and second.retry_after >= 1


def test_problem_body_alone_decides_a_replayed_no_answer(gateway, provider):
    """A site that sends no X-Resilient-* headers: the gateway's problem
    documents carry the verdict."""

    async def main():
        async with client(gateway.bare) as c:
            key = rc.new_key()
            return key, await outcome_of(rc.call(c, "POST", "/labels?drop=9", json={}, key=key, wait_min=0.01))

    key, err = asyncio.run(main())
    assert isinstance(err, rc.ExternalAPIOutcomeUnknownError), f"{type(err).__name__}: {err}"
    assert err.verdict.source == "problem" and err.replayed
    assert (provider.seen[key], provider.executions[key]) == (1, 1)


def test_problem_body_alone_decides_a_key_in_flight(gateway, provider):
    """A repeat whose deadline ends while the first is still in flight
    gets 409 with Retry-After: nothing done, repeat later (from the
    problem document alone: the site sends no X-Resilient-* headers)."""

    async def main():
        async with client(gateway.bare) as c:
            key = rc.new_key()
            first = asyncio.ensure_future(rc.call(c, "POST", "/labels?delay=2", json={}, key=key, attempts=1))
            await asyncio.sleep(0.3)
            with rc.deadline(1.0):
                repeat = await outcome_of(rc.call(c, "POST", "/labels?delay=2", json={}, key=key, attempts=1))
            return key, await first, repeat

    key, first, repeat = asyncio.run(main())
    assert first.status_code == 200
    assert isinstance(repeat, rc.ExternalAPIUnavailableError), f"{type(repeat).__name__}: {repeat}"
    assert (repeat.status, repeat.executed, repeat.verdict.source) == (409, "no", "problem")
    assert repeat.retryable and repeat.retry_after is not None and repeat.retry_after >= 1
    assert provider.executions[key] == 1
