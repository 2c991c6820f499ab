"""Many logical POSTs at once, through every kind of fault, with the
library's retry loop: never executed twice, never reported failed when
the provider executed it."""

from __future__ import annotations

import asyncio

import httpx
import pytest

import resilient_client as rc

# (query, must succeed)
SCENARIOS = [
    ("", True),
    ("", True),
    ("", True),
    ("unavailable=1", True),
    ("unavailable=2", True),
    ("unavailable=1&unavailable_retry_after=1", True),
    ("limited=1&retry_after=1", True),
    ("unavailable=1&limited=1&retry_after=1", True),
    ("drop=1", False),
    ("drop=1", False),
    ("unavailable=1&drop=2", False),
    ("delay=2", False),
    ("delay=2", False),
    ("status=400", False),
    ("status=422", False),
    ("status=500", False),
]


@pytest.mark.parametrize("site", ["egress", "retrying", "direct"])
def test_no_duplicates_and_no_false_failures(gateway, provider, site):
    url = provider.url if site == "direct" else getattr(gateway, site)

    async def one(c, query):
        key = rc.new_key()
        try:
            r = await rc.call(c, "POST", f"/labels?{query}", json={}, key=key, wait_min=0.2, budget=8)
            return key, r
        except rc.ExternalAPIError as e:
            return key, e

    async def main():
        timeout = httpx.Timeout(connect=2, read=1.2, write=5, pool=1)
        async with rc.gateway_client(url, timeout=timeout) as c:
            return await asyncio.gather(*(one(c, q) for q, _ in SCENARIOS))

    results = asyncio.run(main())
    for (query, must_succeed), (key, got) in zip(SCENARIOS, results):
        executed = provider.executions[key]
        what = f"{site} {query or 'plain'}: {type(got).__name__} {got if not isinstance(got, httpx.Response) else got.status_code}"
        assert executed <= 1, f"executed {executed} times: {what}"
        if isinstance(got, httpx.Response):
            assert executed == 1, what
            assert got.json()["label"] == provider.labels[key][0], what
        elif not isinstance(got, rc.ExternalAPIOutcomeUnknownError):
            assert executed == 0, f"reported failed, but executed: {what}"
        if must_succeed:
            assert isinstance(got, httpx.Response), what
