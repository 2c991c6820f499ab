"""The FastAPI example, served in-process, calling the real gateway."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

import httpx
import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "shipping_service.py"


@pytest.fixture
def service(gateway, monkeypatch):
    monkeypatch.setenv("SHIPPING_URL", gateway.egress)
    spec = importlib.util.spec_from_file_location("shipping_service", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def post_shipments(service, orders):
    async def main():
        transport = httpx.ASGITransport(app=service.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as c:
            try:
                return [await c.post("/shipments", json=o) for o in orders]
            finally:
                await service.shipping.aclose()

    return asyncio.run(main())


def test_example_service(service, provider):
    ok, flaky, dropped, refused = post_shipments(
        service,
        [
            {"to": "Lyon"},
            {"to": "Oslo", "scenario": {"unavailable": 1}},
            {"to": "Kyiv", "scenario": {"drop": 9}},
            {"to": "Rome", "scenario": {"status": 422}},
        ],
    )
    assert ok.status_code == 200 and provider.executions[ok.json()["key"]] == 1
    assert flaky.status_code == 200 and provider.executions[flaky.json()["key"]] == 1
    # executed, then cut off: the service says "unknown", with the key to reconcile
    assert dropped.status_code == 202 and dropped.json()["state"] == "unknown"
    assert provider.executions[dropped.json()["key"]] == 1
    assert refused.status_code == 422
