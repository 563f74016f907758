"""The live demo page at ``/``: microphone -> ``/v1/stream`` -> emotion per utterance.

The page is four static files shipped inside the package (``runtime/server/static/``,
found with ``importlib.resources``; no build step, nothing fetched from elsewhere, so a
kiosk works offline). They are served without the API key (they hold no data); the page
asks for the key when ``/v1/model`` answers 401, keeps it in the browser's
``localStorage`` and sends it as ``Authorization: Bearer`` on HTTP requests and, since a
browser WebSocket cannot set headers, as the subprotocol ``emotech.key.<base64url(key)>``
beside ``emotech.v1`` on ``/v1/stream`` (a header, so no access log records it; the
server answers with ``emotech.v1`` and never echoes the key). Every response carries a
Content-Security-Policy that allows only this origin and no framing.
"""

from __future__ import annotations

import base64
import binascii
import importlib.resources

from aiohttp import web

SUBPROTOCOL_KEY_PREFIX = "emotech.key."
PAGE = "index.html"
# file name -> Content-Type: the only files /demo/{name} serves
FILES = {
    PAGE: "text/html",
    "demo.js": "text/javascript",
    "demo.css": "text/css",
    "capture-worklet.js": "text/javascript",
}
HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                "connect-src 'self'; media-src 'self'; base-uri 'none'; form-action 'none'; "
                                "frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def is_page_path(path: str) -> bool:
    """Whether ``path`` is one of the page's files (served without the API key)."""
    return path == "/" or (path.startswith("/demo/") and path[len("/demo/"):] in FILES)


def bearer_from_subprotocol(request: web.Request) -> str:
    """``"Bearer <key>"`` from a WebSocket upgrade's ``Sec-WebSocket-Protocol`` offer of
    ``emotech.key.<base64url(key)>``, or '' when it offers none (or an undecodable one)."""
    for proto in request.headers.get("Sec-WebSocket-Protocol", "").split(","):
        proto = proto.strip()
        if proto.startswith(SUBPROTOCOL_KEY_PREFIX):
            token = proto[len(SUBPROTOCOL_KEY_PREFIX):]
            try:
                key = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("utf-8")
            except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
                return ""
            return "Bearer " + key
    return ""


def load_files() -> dict[str, bytes]:
    """The page's files, read once from the package."""
    root = importlib.resources.files("runtime.server") / "static"
    return {name: (root / name).read_bytes() for name in FILES}


def add_routes(app: web.Application) -> None:
    """``GET /`` (the page) and ``GET /demo/{name}`` (its script, style and worklet)."""
    files = load_files()

    def respond(name: str) -> web.Response:
        return web.Response(body=files[name], content_type=FILES[name], charset="utf-8", headers=HEADERS)

    async def page(request: web.Request) -> web.Response:
        return respond(PAGE)

    async def asset(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in FILES:
            raise web.HTTPNotFound(text=f"no such file: /demo/{name}")
        return respond(name)

    app.router.add_get("/", page)
    app.router.add_get("/demo/{name}", asset)
