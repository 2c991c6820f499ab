"""A shipping API client written the way FastAPI services are taught to
write one: a shared httpx.AsyncClient with explicit timeouts, an
exception layer that turns transport and status errors into the
application's own, Tenacity retries for the transient ones, and one
Idempotency-Key per logical operation, kept across its retries.

ShippingClient is that client; ThinShippingClient is the same without
Tenacity (one try), for a gateway that is meant to do the retrying.
Nothing here knows about the gateway: bench S12 runs this code unchanged
against the provider directly and through the gateway.
"""

import uuid

import httpx
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

# connect, read (each wait for bytes), write, and the wait for a pooled connection
TIMEOUT = httpx.Timeout(connect=2.0, read=5.0, write=5.0, pool=1.0)


class ExternalAPIError(Exception):
    """Something went wrong calling an external API."""

    def __init__(self, message, status_code=None, response=None):
        super().__init__(message)
        self.status_code = status_code
        self.response = response


class ExternalAPITimeoutError(ExternalAPIError):
    """The API did not answer in time."""


class ExternalAPIUnavailableError(ExternalAPIError):
    """The API could not be reached or answered with a server error (5xx)."""


class ExternalAPIBadResponseError(ExternalAPIError):
    """The API refused the request (4xx): repeating it will not help."""


def make_http_client(base_url, **kwargs):
    """The one AsyncClient the service shares (created at startup, closed at shutdown)."""
    return httpx.AsyncClient(base_url=base_url, timeout=TIMEOUT, **kwargs)


async def send(http, method, path, **kwargs):
    """One request; every failure leaves as an ExternalAPIError."""
    try:
        response = await http.request(method, path, **kwargs)
    except httpx.TimeoutException as exc:
        raise ExternalAPITimeoutError(f"{method} {path}: timed out ({type(exc).__name__})") from exc
    except httpx.TransportError as exc:
        # refused, reset, closed without an answer
        raise ExternalAPIUnavailableError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
    if response.status_code >= 500:
        raise ExternalAPIUnavailableError(
            f"{method} {path}: {response.status_code}", response.status_code, response)
    if response.status_code >= 400:
        raise ExternalAPIBadResponseError(
            f"{method} {path}: {response.status_code}", response.status_code, response)
    return response


# Transient failures are tried again: three tries in all, 0.5 s then 1 s
# apart (exponential, capped at 5 s). A 4xx is final.
transient = retry(
    retry=retry_if_exception_type((ExternalAPITimeoutError, ExternalAPIUnavailableError)),
    stop=stop_after_attempt(3),
    wait=wait_exponential(multiplier=0.5, min=0.5, max=5),
    reraise=True,
)


class ThinShippingClient:
    """The client without retries: one try per operation."""

    def __init__(self, http):
        self.http = http

    async def create_shipment(self, shipment):
        # one key per logical operation
        return await self._create(shipment, str(uuid.uuid4()))

    async def get_shipment(self, shipment_id):
        return await self._get(shipment_id)

    async def _create(self, shipment, key):
        response = await send(self.http, "POST", "/v1/shipments", json=shipment,
                              headers={"Idempotency-Key": key})
        return response.json()

    async def _get(self, shipment_id):
        response = await send(self.http, "GET", f"/v1/shipments/{shipment_id}")
        return response.json()


class ShippingClient(ThinShippingClient):
    """The client as taught: transient failures retried, the key kept across the retries."""

    @transient
    async def _create(self, shipment, key):
        return await super()._create(shipment, key)

    @transient
    async def _get(self, shipment_id):
        return await super()._get(shipment_id)
