"""The caller's deadline: what the hook sends, and the gateway answering
at it before the caller's own timeout fires."""

from __future__ import annotations

import asyncio
import time

import httpx

import resilient_client as rc

SEED_TIMEOUT = httpx.Timeout(connect=2, read=5, write=5, pool=1)


def sent_deadline(url, *, budget=None, headers=None):
    """The X-Request-Timeout the provider received for one GET /echo."""

    async def main():
        async with rc.gateway_client(url, timeout=SEED_TIMEOUT) as c:
            if budget is None:
                r = await c.get("/echo", headers=headers)
            else:
                with rc.deadline(budget):
                    r = await c.get("/echo", headers=headers)
            return r.json().get("x-request-timeout")

    return asyncio.run(main())


def test_read_timeout_less_headroom(provider):
    assert sent_deadline(provider.url) == "4.500"


def test_budget_caps_the_read_timeout(provider):
    sent = float(sent_deadline(provider.url, budget=2.0))
    assert 1.7 <= sent <= 1.8


def test_callers_own_header_is_kept(provider):
    assert sent_deadline(provider.url, headers={"X-Request-Timeout": "0.250"}) == "0.250"


def test_sync_client_hook(provider):
    hook = rc.GatewayHook(headroom=0.2)
    with httpx.Client(base_url=provider.url, timeout=SEED_TIMEOUT, event_hooks={"request": [hook.stamp]}) as c:
        with rc.operation() as key:
            echo = c.post("/echo", json={}).json()
    assert echo["x-request-timeout"] == "4.000"
    assert echo["idempotency-key"] == key


def test_key_only_on_unsafe_methods_inside_an_operation(provider):
    async def main():
        async with rc.gateway_client(provider.url) as c:
            outside = (await c.post("/echo")).json()
            with rc.operation() as key:
                get = (await c.get("/echo")).json()
                post = (await c.post("/echo")).json()
                patch = (await c.patch("/echo")).json()
                own = (await c.post("/echo", headers={"Idempotency-Key": "mine"})).json()
            return key, outside, get, post, patch, own

    key, outside, get, post, patch, own = asyncio.run(main())
    assert "idempotency-key" not in outside and "idempotency-key" not in get
    assert post["idempotency-key"] == patch["idempotency-key"] == key
    assert own["idempotency-key"] == "mine"


def test_gateway_answers_at_the_callers_deadline(gateway, provider):
    """A GET to a provider that takes 3 s, from a caller that waits 1 s:
    the gateway's 504 arrives before the caller's own read timeout, with
    its verdict (a timeout, safe to repeat: GET is idempotent)."""

    async def main():
        async with rc.gateway_client(gateway.egress, timeout=httpx.Timeout(connect=2, read=1.0, write=5, pool=1)) as c:
            t0 = time.monotonic()
            try:
                await rc.call(c, "GET", "/status?delay=3", attempts=1)
            except rc.ExternalAPIError as e:
                return e, time.monotonic() - t0

    err, took = asyncio.run(main())
    assert isinstance(err, rc.ExternalAPITimeoutError), f"{type(err).__name__}: {err}"
    assert err.verdict.source == "headers", "the caller's own timeout fired first"
    assert (err.status, err.outcome, err.retryable) == (504, "total_timeout", True)
    assert took < 1.0
