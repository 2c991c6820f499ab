"""The seed's shipping client rebuilt on the project's client library
(clients/python, package resilient_client), as its README teaches: the
shared client from gateway_client (the seed's timeouts, X-Request-Timeout
and the operation's Idempotency-Key on every request), one operation per
call (idempotent) around Tenacity's three tries, whose predicate and
wait follow the gateway's verdict, and the library's exceptions, with
ExternalAPIOutcomeUnknownError for "the provider may have acted".

drive.py imports this with the library's directory on sys.path.
"""

import resilient_client as rc
from resilient_client.tenacity import retry_if_gateway_says, wait_gateway
from tenacity import retry, stop_after_attempt

transient = retry(stop=stop_after_attempt(3), retry=retry_if_gateway_says(), wait=wait_gateway(), reraise=True)


class LibraryShippingClient:
    def __init__(self, http):
        self.http = http

    @rc.idempotent  # one Idempotency-Key per call, kept across its retries
    @transient
    async def create_shipment(self, shipment):
        return rc.decode_json(await rc.call_once(self.http, "POST", "/v1/shipments", json=shipment))

    @transient
    async def get_shipment(self, shipment_id):
        return rc.decode_json(await rc.call_once(self.http, "GET", f"/v1/shipments/{shipment_id}"))


def setup(base_url, hooks):
    """The shared client, the shipping client, and how drive.py names
    each exception (the most specific first)."""
    http = rc.gateway_client(base_url, event_hooks=hooks)
    verdicts = [
        (rc.ExternalAPIOutcomeUnknownError, "unknown"),
        (rc.ExternalAPITimeoutError, "timeout"),
        (rc.ExternalAPIUnavailableError, "unavailable"),
        (rc.ExternalAPIBadResponseError, "bad_response"),
    ]
    return http, LibraryShippingClient(http), verdicts
