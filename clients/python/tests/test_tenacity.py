"""Tenacity, written as the classic client writes it, with the gateway's
predicate and wait."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_fixed

import resilient_client as rc
from resilient_client.tenacity import retry_if_gateway_says, wait_gateway


def make_create_label(c, keys, fallback_wait=0.01):
    @rc.idempotent
    @retry(stop=stop_after_attempt(3), retry=retry_if_gateway_says(), wait=wait_gateway(wait_fixed(fallback_wait)), reraise=True)
    async def create_label(path):
        keys.append(rc.current_key())
        r = await rc.call_once(c, "POST", path, json={"to": "Lyon"})
        return rc.decode_json(r)

    return create_label


def test_retry_after_then_success_with_one_key(gateway, provider):
    async def main():
        keys = []
        async with rc.gateway_client(gateway.egress) as c:
            create_label = make_create_label(c, keys)
            t0 = time.monotonic()
            label = await create_label("/labels?limited=1&retry_after=1")
            first = await create_label("/labels")
            return keys, label, first, time.monotonic() - t0

    keys, label, first, took = asyncio.run(main())
    assert len(keys) == 3 and keys[0] == keys[1] != keys[2]  # one key per call, kept across its retries
    assert took >= 0.9
    assert label["label"] == provider.labels[keys[0]][0]
    assert (provider.seen[keys[0]], provider.executions[keys[0]]) == (2, 1)


def test_unknown_outcome_is_not_retried_blindly(gateway, provider):
    async def main():
        keys = []
        async with rc.gateway_client(gateway.egress) as c:
            create_label = make_create_label(c, keys)
            with pytest.raises(rc.ExternalAPIOutcomeUnknownError) as info:
                await create_label("/labels?drop=9")
            return keys, info.value

    keys, err = asyncio.run(main())
    # one attempt the gateway may resolve (same key), then its replay: final
    assert len(set(keys)) == 1 and len(keys) == 2
    assert err.replayed
    assert provider.executions[keys[0]] == 1


def test_refusal_is_not_retried(gateway, provider):
    async def main():
        keys = []
        async with rc.gateway_client(gateway.egress) as c:
            create_label = make_create_label(c, keys)
            with pytest.raises(rc.ExternalAPIBadResponseError):
                await create_label("/labels?status=422")
            return keys

    keys = asyncio.run(main())
    assert len(keys) == 1 and provider.seen[keys[0]] == 1


def test_classic_predicate_never_repeats_what_may_have_acted(provider):
    """The classic predicate (retry Timeout and Unavailable) on a direct
    call: a dropped POST is OutcomeUnknown, which it does not retry."""

    async def main():
        keys = []
        async with rc.gateway_client(provider.url, timeout=httpx.Timeout(connect=2, read=1, write=5, pool=1)) as c:

            @rc.idempotent
            @retry(
                stop=stop_after_attempt(3),
                retry=retry_if_exception_type((rc.ExternalAPITimeoutError, rc.ExternalAPIUnavailableError)),
                wait=wait_fixed(0.01),
                reraise=True,
            )
            async def create_label(path):
                keys.append(rc.current_key())
                return (await rc.call_once(c, "POST", path, json={})).json()

            with pytest.raises(rc.ExternalAPIOutcomeUnknownError):
                await create_label("/labels?drop=9")
            with pytest.raises(rc.ExternalAPIOutcomeUnknownError):
                await create_label("/labels?delay=1.5")
            ok = await create_label("/labels?unavailable=2")
            return keys, ok

    keys, ok = asyncio.run(main())
    assert len(keys) == 5  # drop: 1, slow: 1, unavailable: 3
    assert provider.executions[keys[0]] == 1 and provider.executions[keys[1]] == 1
    assert ok["label"] == provider.labels[keys[2]][0] and provider.executions[keys[2]] == 1
