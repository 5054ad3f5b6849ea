"""The dashboard's HTTP face: a Starlette application over a ``Board`` (node.dashboard.board).

Rule 1 (access): every route but none needs the token from ``<data dir>/dashboard.token`` (the agent's:
``agent-dashboard.token``, node.dashboard.serve Rule 2): as
``?token=`` (the page then sets an HttpOnly, SameSite=Strict cookie and redirects to the same path without
it, so the token leaves the address bar), as the cookie, or as ``Authorization: Bearer``. Without it:
401 and no data. Compared in constant time.
Rule 2: a ``Host`` other than 127.0.0.1 or localhost is refused (421), so a page elsewhere cannot reach the
dashboard through DNS rebinding; the server listens on 127.0.0.1 only (node.dashboard.serve).
Rule 3 (read-only): GET only; no route signs, spends or changes anything.
Rule 4: blocking reads (SQLite, the audit) run in worker threads; the event stream sends a snapshot
whenever the board's version moves on, and a comment every 15 s to keep the connection.
Rule 5 (two sides, one application): the provider's dashboard and the buyer's (served by ``suanli agent``)
are this application with a ``Side``: the pages, the ``/api/{part}`` names and the cookie's name differ;
the access rules, headers, event stream and script are the same. The cookies are named apart because a
browser sends a 127.0.0.1 cookie to every port: the two dashboards of one machine would overwrite each
other's.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
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

from node.dashboard import buyer_page, page
from node.dashboard.board import Board

COOKIE = "suanli_dashboard"
AGENT_COOKIE = "suanli_agent_dashboard"
HOSTS = frozenset({"127.0.0.1", "localhost"})
KEEPALIVE_S = 15.0
HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
           "Referrer-Policy": "no-referrer",
           "Content-Security-Policy": "default-src 'self'; style-src 'unsafe-inline'; img-src 'self' data:; "
                                      "frame-ancestors 'none'"}
Handler = Callable[[Request], Awaitable[Response]]
Doc = dict[str, Any]


@dataclass(frozen=True)
class Side:
    """Rule 5: what differs between the provider's dashboard and the buyer's."""

    cookie: str
    parts: tuple[str, ...]  # /api/{part}: keys of the board's snapshot
    overview: Callable[[Doc, int], str]
    live: Callable[[Doc], str]
    agreements: Callable[[dict[str, Doc]], str]
    agreement: Callable[[str, list[Doc], Doc | None, list[dict[str, str]]], str]
    command: str  # what prints the URL with the token
    logs: bool = False  # /api/logs/{id}: the job's output as received (the board's ``logs``)


LOG_LINES_SHOWN = 1000
PROVIDER = Side(COOKIE, ("status", "jobs", "earnings", "errors"), page.overview, page.live_html, page.agreements,
                lambda a, receipts, doc, logs: page.agreement(a, receipts, doc), "suanli dashboard")
BUYER = Side(AGENT_COOKIE, ("status", "jobs", "spend"), buyer_page.overview, buyer_page.live_html,
             buyer_page.agreements,
             lambda a, receipts, doc, logs: buyer_page.agreement(a, receipts, doc, logs, LOG_LINES_SHOWN),
             "suanli dashboard --agent", logs=True)


def _host_ok(request: Request) -> bool:
    host = request.headers.get("host", "")
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host
    return name in HOSTS


def build_app(board: Board, token: str, changed: Callable[[], trio.Event], side: Side = PROVIDER) -> Starlette:
    """``changed()`` returns an event set at the board's next new version (node.dashboard.serve)."""
    cookie = side.cookie

    def given(request: Request) -> str:
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return request.query_params.get("token") or request.cookies.get(cookie) or ""

    def guarded(handler: Handler) -> Handler:
        async def guard(request: Request) -> Response:
            if not _host_ok(request):
                return PlainTextResponse("421: use http://127.0.0.1 to reach this dashboard", 421, headers=HEADERS)
            if not hmac.compare_digest(given(request).encode(), token.encode()):
                return PlainTextResponse(f"401: this dashboard needs its token: run `{side.command}` for the URL",
                                         401, headers=HEADERS)
            if "token" in request.query_params and request.method == "GET" and "text/html" in \
                    request.headers.get("accept", ""):
                response: Response = RedirectResponse(request.url.path, 303, headers=HEADERS)
            else:
                response = await handler(request)
            if request.cookies.get(cookie) != token:
                response.set_cookie(cookie, token, httponly=True, samesite="strict", path="/")
            return response
        return guard

    def html(text: str) -> HTMLResponse:
        return HTMLResponse(text, headers=HEADERS)

    def doc(value: Any, status: int = 200) -> JSONResponse:
        return JSONResponse(value, status, headers=HEADERS)

    async def overview(request: Request) -> Response:
        return html(side.overview(board.snapshot, board.version))

    async def api(request: Request) -> Response:
        part = request.path_params["part"]
        if part not in side.parts:
            return doc({"error": f"no endpoint /api/{part}"}, 404)
        return doc(board.snapshot.get(part))

    async def audits(request: Request) -> Response:
        found = await trio.to_thread.run_sync(board.audits)
        if "application/json" in request.headers.get("accept", "") or request.url.path.startswith("/api/"):
            return doc({"agreements": list(found.values())})
        return html(side.agreements(found))

    async def resolve(request: Request) -> tuple[str | None, dict[str, Any], Response | None]:
        prefix = request.path_params["agreement"].lower()
        found = await trio.to_thread.run_sync(board.audits)
        matches = [a for a in found if a.startswith(prefix)] if prefix.isalnum() else []
        if len(matches) != 1:
            return None, found, doc({"error": "no such agreement" if not matches else "ambiguous agreement id prefix"},
                                    404)
        return matches[0], found, None

    def logs_of(agreement: str) -> list[dict[str, str]]:
        return board.logs(bytes.fromhex(agreement)) if side.logs else []

    async def one(request: Request) -> Response:
        agreement, found, missing = await resolve(request)
        if agreement is None:
            return missing or doc({"error": "no such agreement"}, 404)
        receipts = await trio.to_thread.run_sync(board.receipts, bytes.fromhex(agreement))
        if request.url.path.startswith("/api/"):
            return doc({"agreement_id": agreement, "receipts": receipts, "audit": found[agreement]})
        logs = await trio.to_thread.run_sync(logs_of, agreement)
        return html(side.agreement(agreement, receipts, found[agreement], logs))

    async def logs(request: Request) -> Response:
        agreement, _, missing = await resolve(request)
        if agreement is None:
            return missing or doc({"error": "no such agreement"}, 404)
        return doc({"agreement_id": agreement, "logs": await trio.to_thread.run_sync(logs_of, agreement)})

    rendered: dict[tuple[int, bool], str] = {}  # the newest event, rendered once for every stream

    def event(version: int, with_snapshot: bool) -> str:
        key = (version, with_snapshot)
        if key not in rendered:
            rendered.clear()
            body: dict[str, Any] = {"version": version, "html": side.live(board.snapshot)}
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
    if side.logs:
        routes.insert(0, Route("/api/logs/{agreement}", guarded(logs)))
    return Starlette(routes=routes)
