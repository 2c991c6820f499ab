"""Call external APIs through the resilient Caddy egress gateway.

The gateway says, on every answer, what happened and whether the
upstream may have acted; this package turns that verdict into the
exceptions an application catches, tells the gateway the caller's
deadline, and keeps one Idempotency-Key per logical operation::

    import resilient_client as rc

    shipping = rc.gateway_client("http://shipping.internal:8080")
    try:
        r = await rc.call(shipping, "POST", "/labels", json=order, budget=10)
    except rc.ExternalAPIOutcomeUnknownError:
        ...  # the label may exist: reconcile, never report it as failed
    except rc.ExternalAPIError:
        ...  # nothing was done, or the request was refused

Tenacity users: ``resilient_client.tenacity`` (``retry_if_gateway_says``,
``wait_gateway``).
"""

from .calls import backoff, call, call_once
from .classify import (
    IDEMPOTENT_METHODS,
    decode_json,
    error_for_exception,
    error_for_response,
    raise_for_verdict,
)
from .client import DEFAULT_HOOK, DEFAULT_TIMEOUT, GatewayHook, gateway_client
from .deadline import DEADLINE_HEADER, deadline, stamp_deadline, time_left
from .errors import (
    ExternalAPIBadResponseError,
    ExternalAPIError,
    ExternalAPIOutcomeUnknownError,
    ExternalAPITimeoutError,
    ExternalAPIUnavailableError,
)
from .keys import KEY_HEADER, KEY_METHODS, current_key, idempotent, new_key, operation, stamp_key
from .verdict import Verdict, parse_retry_after, read_verdict

__version__ = "0.1.0"

__all__ = [
    "DEADLINE_HEADER",
    "DEFAULT_HOOK",
    "DEFAULT_TIMEOUT",
    "ExternalAPIBadResponseError",
    "ExternalAPIError",
    "ExternalAPIOutcomeUnknownError",
    "ExternalAPITimeoutError",
    "ExternalAPIUnavailableError",
    "GatewayHook",
    "IDEMPOTENT_METHODS",
    "KEY_HEADER",
    "KEY_METHODS",
    "Verdict",
    "backoff",
    "call",
    "call_once",
    "current_key",
    "deadline",
    "decode_json",
    "error_for_exception",
    "error_for_response",
    "gateway_client",
    "idempotent",
    "new_key",
    "operation",
    "parse_retry_after",
    "raise_for_verdict",
    "read_verdict",
    "stamp_deadline",
    "stamp_key",
    "time_left",
]
