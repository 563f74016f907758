"""Who may call the server: the API key, the ``Host`` a request names, and the web page
(``Origin``) a browser request comes from.

* ``Host``: a server bound to a loopback address answers only requests that name a
  loopback host (``localhost``, ``*.localhost``, ``127.0.0.0/8``, ``[::1]``) or one of
  ``allow_hosts``. A DNS-rebinding page (``evil.example`` resolved to 127.0.0.1) names its
  own host, and is refused. A server bound elsewhere accepts any host unless
  ``allow_hosts`` is given.
* ``Origin``: browsers send it with every WebSocket handshake and every cross-origin
  request. A request whose origin is the server itself (a page the server serves at
  ``/``) passes; any other origin passes only if it is in ``allow_origins`` (then the
  response carries ``Access-Control-Allow-Origin`` and a CORS preflight is answered).
  Requests without ``Origin`` (curl, SDKs, same-origin navigations) pass.
* The API key: ``Authorization: Bearer <key>`` on every endpoint but ``/healthz`` when
  the server has one.
"""

from __future__ import annotations

import hmac
import ipaddress

from aiohttp import web

from runtime.server import demo
from runtime.server.limits import ApiError, ServeConfig, is_loopback

PREFLIGHT_MAX_AGE_S = 600  # how long a browser may cache a preflight answer


def host_name(authority: str) -> str:
    """The host of a ``Host`` header or an origin's authority, without port, brackets or
    a trailing dot, lowercased: ``[::1]:8080`` -> ``::1``."""
    a = authority.strip().lower()
    if a.startswith("["):
        return a[1 : a.find("]")] if "]" in a else a
    if a.count(":") == 1:
        a = a.split(":", 1)[0]
    return a.rstrip(".")


def is_loopback_name(name: str) -> bool:
    """Whether ``name`` (as ``host_name`` gives it) always means this machine."""
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_host(request: web.Request, config: ServeConfig) -> None:
    """Raise ``ApiError`` 403 if the request's ``Host`` is not one this server answers."""
    given = request.headers.get("Host")
    if given is None or "*" in config.allow_hosts:
        return
    name = host_name(given)
    if name in {host_name(h) for h in config.allow_hosts}:
        return
    if is_loopback(config.host):
        if is_loopback_name(name):
            return
    elif not config.allow_hosts:
        return
    raise ApiError(403, "host_not_allowed", f"this server does not answer for the host {given[:100]!r}; "
                   "use its loopback address (127.0.0.1 or localhost), or start it with --allow-host NAME")


def check_origin(request: web.Request, config: ServeConfig) -> str | None:
    """The origin to name in ``Access-Control-Allow-Origin`` (a cross-origin request from
    an allowed page), or None (no ``Origin``, or the server's own); raise ``ApiError``
    403 for a page that is not allowed."""
    origin = request.headers.get("Origin")
    if origin is None:
        return None
    normalised = origin.strip().lower().rstrip("/")
    scheme, sep, authority = normalised.partition("://")
    host = request.headers.get("Host", "").strip().lower()
    if sep and scheme in ("http", "https") and host and authority == host:
        return None  # same origin: a page this server (or its TLS proxy) served
    if "*" in config.allow_origins or normalised in config.allow_origins:
        return origin.strip()
    raise ApiError(403, "origin_not_allowed", f"requests from web pages at {origin[:100]!r} are refused: only pages the "
                   "server itself serves may call it; allow another origin with --allow-origin")


def preflight(request: web.Request, origin: str) -> web.Response:
    """The answer to a CORS preflight (``OPTIONS`` with ``Access-Control-Request-Method``)
    from an allowed origin."""
    return web.Response(status=204, headers={
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Methods": "GET, POST",
        "Access-Control-Allow-Headers": "Authorization, Content-Type",
        "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE_S),
        "Vary": "Origin",
    })


def check_api_key(request: web.Request, key: str | None) -> None:
    """Raise ``ApiError`` 401 unless the request carries ``Authorization: Bearer <key>``, or on
    ``/v1/stream`` the key subprotocol (``runtime.server.demo``) (no key: every request
    passes; ``/healthz`` and the demo page's files always do)."""
    if not key or request.path == "/healthz" or demo.is_page_path(request.path):
        return  # the demo page's files hold no data; the page asks for the key itself
    given = request.headers.get("Authorization", "")
    if not given and request.path == "/v1/stream":  # a browser WebSocket sends it as a subprotocol
        given = demo.bearer_from_subprotocol(request)
    # surrogatepass: a header's undecodable bytes arrive as lone surrogates
    # the scheme name is case-insensitive (RFC 9110 11.1), the key is not
    if not (given[:7].lower() == "bearer " and hmac.compare_digest(given[7:].encode("utf-8", "surrogatepass"), key.encode("ascii"))):
        raise ApiError(401, "unauthorized", "missing or wrong API key; send 'Authorization: Bearer <key>'",
                       headers={"WWW-Authenticate": "Bearer"})
