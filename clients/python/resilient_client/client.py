"""The httpx side: a request hook and a client that use it."""

from __future__ import annotations

from typing import Any, Iterable, Optional

import httpx

from .deadline import DEADLINE_HEADER, stamp_deadline
from .keys import KEY_HEADER, KEY_METHODS, stamp_key

#: The timeouts the classic FastAPI + httpx client uses for an external API.
DEFAULT_TIMEOUT = httpx.Timeout(connect=2.0, read=5.0, write=5.0, pool=1.0)


class GatewayHook:
    """An httpx request event hook that tells the gateway what it needs:
    the caller's deadline (``X-Request-Timeout``, see ``stamp_deadline``)
    and the current operation's Idempotency-Key on POST and PATCH (see
    ``operation``).

    An instance is an async hook for ``httpx.AsyncClient``; its ``stamp``
    method is the hook for a sync ``httpx.Client``::

        hook = GatewayHook()
        httpx.AsyncClient(event_hooks={"request": [hook]})
        httpx.Client(event_hooks={"request": [hook.stamp]})
    """

    def __init__(
        self,
        *,
        headroom: float = 0.1,
        min_headroom: float = 0.05,
        deadline_header: str = DEADLINE_HEADER,
        key_header: str = KEY_HEADER,
        key_methods: Iterable[str] = KEY_METHODS,
    ) -> None:
        self.headroom = headroom
        self.min_headroom = min_headroom
        self.deadline_header = deadline_header
        self.key_header = key_header
        self.key_methods = frozenset(m.upper() for m in key_methods)

    def stamp(self, request: httpx.Request) -> None:
        """Sets the deadline and key headers on request (sync hook)."""
        stamp_key(request, header=self.key_header, methods=self.key_methods)
        stamp_deadline(
            request,
            headroom=self.headroom,
            min_headroom=self.min_headroom,
            header=self.deadline_header,
        )

    async def __call__(self, request: httpx.Request) -> None:
        self.stamp(request)


#: The hook ``gateway_client`` and ``call`` use unless given another.
DEFAULT_HOOK = GatewayHook()


def gateway_client(
    base_url: str = "",
    *,
    timeout: Optional[httpx.Timeout] = None,
    hook: Optional[GatewayHook] = None,
    **kwargs: Any,
) -> httpx.AsyncClient:
    """A shared ``httpx.AsyncClient`` for a gateway site: ``DEFAULT_TIMEOUT``
    unless told otherwise, and the gateway hook first among its request
    hooks. Other keyword arguments go to ``httpx.AsyncClient``."""
    hooks = dict(kwargs.pop("event_hooks", None) or {})
    hooks["request"] = [hook or DEFAULT_HOOK, *hooks.get("request", [])]
    return httpx.AsyncClient(
        base_url=base_url,
        timeout=timeout if timeout is not None else DEFAULT_TIMEOUT,
        event_hooks=hooks,
        **kwargs,
    )
