"""Bench S12's application: logical operations on a shipping API through
one of the clients, as a service would run them, and what the
application was told of each.

    /usr/bin/python3 bench/s12/drive.py --client seed --base-url http://127.0.0.1:PORT \
        --ops 500 --rate 12.5 --start EPOCH [--library PATH]

Operation i starts at EPOCH + i/rate (open loop: whatever happens to the
earlier ones) and is a create (POST) with reference "o<i>", or, one in
three, a read (GET) of shipment "o<i>". Once all have ended, one JSON
line per operation goes to stdout:

    {"op": "o3", "method": "POST", "intended": 0.12, "done": 0.13,
     "verdict": "ok", "status": 201, "tries": 1, "outcome": "", "executed": "", "error": ""}

verdict is what the application was told: ok, timeout, unavailable,
bad_response (the seed's exceptions), unknown (the library's "may have
acted"), or error:<type> for anything else. tries counts the requests
the client sent; status, outcome and executed are those of the last
answer it got (X-Resilient-Outcome and X-Resilient-Executed when a
gateway sends them).
"""

import argparse
import asyncio
import contextvars
import json
import sys
import time

# what the current operation's requests did; set per operation task
_record = contextvars.ContextVar("record")


async def _on_request(request):
    rec = _record.get()
    rec["tries"] += 1
    rec["status"], rec["outcome"], rec["executed"] = 0, "", ""


async def _on_response(response):
    rec = _record.get()
    rec["status"] = response.status_code
    rec["outcome"] = response.headers.get("X-Resilient-Outcome", "")
    rec["executed"] = response.headers.get("X-Resilient-Executed", "")


def seed_setup(base_url, hooks, thin):
    import seed_client

    http = seed_client.make_http_client(base_url, event_hooks=hooks)
    cls = seed_client.ThinShippingClient if thin else seed_client.ShippingClient
    verdicts = [
        (seed_client.ExternalAPITimeoutError, "timeout"),
        (seed_client.ExternalAPIUnavailableError, "unavailable"),
        (seed_client.ExternalAPIBadResponseError, "bad_response"),
    ]
    return http, cls(http), verdicts


def library_setup(base_url, hooks, path):
    sys.path.insert(0, path)
    import library_client

    return library_client.setup(base_url, hooks)


def verdict_of(exc, verdicts):
    for cls, name in verdicts:
        if isinstance(exc, cls):
            return name
    return "error:" + type(exc).__name__


async def operation(client, verdicts, i, intended, t0):
    rec = {"op": f"o{i}", "method": "GET" if i % 3 == 2 else "POST", "intended": intended - t0,
           "done": 0.0, "verdict": "ok", "status": 0, "tries": 0, "outcome": "", "executed": "",
           "error": ""}
    _record.set(rec)
    loop = asyncio.get_running_loop()
    try:
        if rec["method"] == "POST":
            await client.create_shipment({
                "reference": rec["op"],
                "recipient": {"name": "Ada Lovelace", "postal_code": "75001", "country": "FR"},
                "parcels": [{"weight_kg": 1.2, "length_cm": 30, "width_cm": 20, "height_cm": 10}],
                "service": "standard",
            })
        else:
            await client.get_shipment(rec["op"])
    except Exception as exc:  # what the application is told, whatever it is
        rec["verdict"] = verdict_of(exc, verdicts)
        rec["error"] = f"{type(exc).__name__}: {exc}"[:300]
    rec["done"] = loop.time() - t0
    return rec


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--client", choices=["seed", "thin", "library"], required=True)
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--ops", type=int, default=500)
    ap.add_argument("--rate", type=float, default=12.5)
    ap.add_argument("--start", type=float, required=True, help="epoch seconds of the first operation")
    ap.add_argument("--library", default="", help="the library's source directory (clients/python)")
    args = ap.parse_args()

    hooks = {"request": [_on_request], "response": [_on_response]}
    if args.client == "library":
        http, client, verdicts = library_setup(args.base_url, hooks, args.library)
    else:
        http, client, verdicts = seed_setup(args.base_url, hooks, args.client == "thin")

    loop = asyncio.get_running_loop()
    t0 = loop.time() + (args.start - time.time())
    tasks = []
    async with http:
        for i in range(args.ops):
            intended = t0 + i / args.rate
            delay = intended - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(operation(client, verdicts, i, intended, t0)))
        records = await asyncio.gather(*tasks)
    for rec in records:
        sys.stdout.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
