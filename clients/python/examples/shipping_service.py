"""A FastAPI service that buys shipping labels through the gateway.

    SHIPPING_URL=http://shipping.internal:8080 uvicorn shipping_service:app
"""

import os

from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse

import resilient_client as rc

app = FastAPI()
shipping = rc.gateway_client(os.environ.get("SHIPPING_URL", "http://shipping.internal:8080"))


@app.post("/shipments")
async def create_shipment(order: dict):
    try:
        # one Idempotency-Key for all attempts; repeats only what the gateway says is safe
        r = await rc.call(shipping, "POST", "/labels", json=order, budget=10)
    except rc.ExternalAPIOutcomeUnknownError as e:
        # the label may exist: never tell the user it failed; reconcile with the key
        return JSONResponse({"state": "unknown", "key": e.request.headers.get("Idempotency-Key")}, status_code=202)
    except rc.ExternalAPIBadResponseError as e:
        raise HTTPException(422, f"the shipping API refused the order ({e.status})")
    except rc.ExternalAPIError as e:  # nothing was done: safe to try again later
        raise HTTPException(503, "shipping is unavailable", headers={"Retry-After": str(int(e.retry_after or 5))})
    return r.json()


@app.on_event("shutdown")
async def close_client() -> None:
    await shipping.aclose()
