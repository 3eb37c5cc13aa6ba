"""The HTTP service (``nas serve``): routes in ``app``, their reply shapes in ``schemas``, what
clients may send and name in ``confine``, the bounded job/export queue in ``runner``, the ASGI
gate (hosts, methods, body sizes) in ``gate``."""

from nas.service.app import create_app, is_loopback, resolve_token, serve

__all__ = ["create_app", "is_loopback", "resolve_token", "serve"]
