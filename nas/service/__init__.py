"""The HTTP service (``nas serve``): routes in ``app``, what clients may name in ``confine``,
the bounded job/export queue in ``runner``, the ASGI gate (hosts, methods, sizes) in ``gate``."""

from nas.service.app import create_app, is_loopback, resolve_token, serve

__all__ = ["create_app", "is_loopback", "resolve_token", "serve"]
