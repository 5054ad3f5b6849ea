"""The dashboard's HTTP face: a Starlette application over a ``Board`` (node.dashboard.board).

Rule 1 (access): every route but none needs the token from ``<data dir>/dashboard.token``: as
``?token=`` (the page then sets an HttpOnly, SameSite=Strict cookie and redirects to the same path without
it, so the token leaves the address bar), as the cookie, or as ``Authorization: Bearer``. Without it:
401 and no data. Compared in constant time.
Rule 2: a ``Host`` other than 127.0.0.1 or localhost is refused (421), so a page elsewhere cannot reach the
dashboard through DNS rebinding; the server listens on 127.0.0.1 only (node.dashboard.serve).
Rule 3 (read-only): GET only; no route signs, spends or changes anything.
Rule 4: blocking reads (SQLite, the audit) run in worker threads; the event stream sends a snapshot
whenever the board's version moves on, and a comment every 15 s to keep the connection.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib.resources import files
from typing import Any

import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

from node.dashboard import page
from node.dashboard.board import Board

COOKIE = "suanli_dashboard"
HOSTS = frozenset({"127.0.0.1", "localhost"})
KEEPALIVE_S = 15.0
HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
           "Referrer-Policy": "no-referrer",
           "Content-Security-Policy": "default-src 'self'; style-src 'unsafe-inline'; img-src 'self' data:; "
                                      "frame-ancestors 'none'"}
Handler = Callable[[Request], Awaitable[Response]]


def _host_ok(request: Request) -> bool:
    host = request.headers.get("host", "")
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host
    return name in HOSTS


def build_app(board: Board, token: str, changed: Callable[[], trio.Event]) -> Starlette:
    """``changed()`` returns an event set at the board's next new version (node.dashboard.serve)."""

    def given(request: Request) -> str:
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return request.query_params.get("token") or request.cookies.get(COOKIE) or ""

    def guarded(handler: Handler) -> Handler:
        async def guard(request: Request) -> Response:
            if not _host_ok(request):
                return PlainTextResponse("421: use http://127.0.0.1 to reach this dashboard", 421, headers=HEADERS)
            if not hmac.compare_digest(given(request).encode(), token.encode()):
                return PlainTextResponse("401: this dashboard needs its token: run `suanli dashboard` for the URL",
                                         401, headers=HEADERS)
            if "token" in request.query_params and request.method == "GET" and "text/html" in \
                    request.headers.get("accept", ""):
                response: Response = RedirectResponse(request.url.path, 303, headers=HEADERS)
            else:
                response = await handler(request)
            if request.cookies.get(COOKIE) != token:
                response.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/")
            return response
        return guard

    def html(text: str) -> HTMLResponse:
        return HTMLResponse(text, headers=HEADERS)

    def doc(value: Any, status: int = 200) -> JSONResponse:
        return JSONResponse(value, status, headers=HEADERS)

    async def overview(request: Request) -> Response:
        return html(page.overview(board.snapshot, board.version))

    async def api(request: Request) -> Response:
        part = request.path_params["part"]
        if part not in ("status", "jobs", "earnings", "errors"):
            return doc({"error": f"no endpoint /api/{part}"}, 404)
        return doc(board.snapshot.get(part))

    async def audits(request: Request) -> Response:
        found = await trio.to_thread.run_sync(board.audits)
        if "application/json" in request.headers.get("accept", "") or request.url.path.startswith("/api/"):
            return doc({"agreements": list(found.values())})
        return html(page.agreements(found))

    async def one(request: Request) -> Response:
        prefix = request.path_params["agreement"].lower()
        found = await trio.to_thread.run_sync(board.audits)
        matches = [a for a in found if a.startswith(prefix)] if prefix.isalnum() else []
        if len(matches) != 1:
            return doc({"error": "no such agreement" if not matches else "ambiguous agreement id prefix"}, 404)
        receipts = await trio.to_thread.run_sync(board.receipts, bytes.fromhex(matches[0]))
        if request.url.path.startswith("/api/"):
            return doc({"agreement_id": matches[0], "receipts": receipts, "audit": found[matches[0]]})
        return html(page.agreement(matches[0], receipts, found[matches[0]]))

    rendered: dict[tuple[int, bool], str] = {}  # the newest event, rendered once for every stream

    def event(version: int, with_snapshot: bool) -> str:
        key = (version, with_snapshot)
        if key not in rendered:
            rendered.clear()
            body: dict[str, Any] = {"version": version, "html": page.live_html(board.snapshot)}
            if with_snapshot:
                body["snapshot"] = board.snapshot
            rendered[key] = f"event: snapshot\ndata: {json.dumps(body)}\n\n"
        return rendered[key]

    async def events(request: Request) -> Response:
        with_snapshot = request.query_params.get("snapshot") == "1"

        async def stream() -> AsyncIterator[str]:
            sent = -1
            while True:
                if board.version != sent:
                    sent = board.version
                    yield event(sent, with_snapshot)
                with trio.move_on_after(KEEPALIVE_S) as scope:
                    await changed().wait()
                if scope.cancelled_caught:
                    yield ": keepalive\n\n"
        return StreamingResponse(stream(), media_type="text/event-stream", headers=HEADERS)

    async def script(request: Request) -> Response:
        text = files("node.dashboard").joinpath("static/dashboard.js").read_text()
        return Response(text, media_type="text/javascript", headers=HEADERS)

    routes = [Route("/", guarded(overview)), Route("/api/events", guarded(events)),
              Route("/api/agreements", guarded(audits)), Route("/api/agreements/{agreement}", guarded(one)),
              Route("/api/{part}", guarded(api)), Route("/agreements", guarded(audits)),
              Route("/agreements/{agreement}", guarded(one)), Route("/static/dashboard.js", guarded(script))]
    return Starlette(routes=routes)
