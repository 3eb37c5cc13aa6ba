"""An ASGI gate in front of the routes: Host allow-list, method dispatch, body size.

- ``Host`` not in the allow-list (when one is set): 400, so a DNS-rebinding page cannot talk to
  a loopback service through the browser.
- A method no route of the path declares: 405 with an ``Allow`` header naming every method the
  path has (``OPTIONS``: 204 with the same header).
- A body over ``max_body`` bytes (by ``Content-Length``, or counted while it streams in): 413,
  without reading the rest. The gate holds the (small) body and hands it on in one piece.
"""

from __future__ import annotations

import json

from starlette.routing import Match


class Gate:
    def __init__(self, app, routes, max_body: int, allowed_hosts: set[str] | None):
        self.app, self.routes, self.max_body = app, routes, max_body
        self.allowed_hosts = allowed_hosts

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.allowed_hosts is not None and _hostname(headers.get("host", "")) not in (
            self.allowed_hosts
        ):
            return await _reply(send, 400, "Host header not allowed by this server")
        methods = self._methods(scope)
        if methods and scope["method"] not in methods:
            allow = ", ".join(sorted(methods | {"OPTIONS"}))
            if scope["method"] == "OPTIONS":
                return await _reply(send, 204, None, {"allow": allow})
            return await _reply(send, 405, "method not allowed", {"allow": allow})
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            return await _reply(send, 413, f"request body over {self.max_body // 1024} KiB")
        body, more = b"", True
        while more:  # read the whole body first (at most max_body), then hand it on
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body:
                return await _reply(send, 413, f"request body over {self.max_body // 1024} KiB")
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _methods(self, scope) -> set[str]:
        """Every method the routes matching this path accept (empty: no route matches)."""
        methods: set[str] = set()
        for route in self.routes:
            match, _ = route.matches(scope)
            if match != Match.NONE:
                methods |= set(getattr(route, "methods", None) or ())
        return methods


def _hostname(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


async def _reply(send, status: int, detail: str | None, headers: dict | None = None) -> None:
    body = b"" if detail is None else json.dumps({"detail": detail}).encode()
    raw = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    if detail is not None:
        raw.append((b"content-type", b"application/json"))
    raw.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
