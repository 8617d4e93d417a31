"""The labeling page's ASGI app (Starlette): a static page and a small JSON API.

Endpoints (every error is a JSON object `{"error": "..."}` with a 4xx status, or 500 with no
details for a bug; never an HTML traceback; the one exception is a refused Host header, answered
by Starlette's TrustedHostMiddleware with 400 and the text "Invalid host header"):

    GET  /                                  the page (static HTML; its script is /static/app.js)
    GET  /static/app.js, /static/style.css  the page's script and style (a fixed list of files)
    GET  /api/state                         session, budget, progress, default annotator
    GET  /api/vocab?q=dog&limit=20          labels matching q, those already given in the session
                                            first: [{name, description, uses}]
    POST /api/next        {claimant}        lease the tab's next cluster: {request, progress}
    GET  /api/clusters/{c}/random-member?exclude=W   another member of a served cluster
    GET  /api/windows/{w}/audio.wav         the window's clip with context, 16 kHz mono WAV
    GET  /api/windows/{w}/spectrogram.png   the clip's log-mel picture, the window outlined
    GET  /api/windows/{w}/frame.png         the window's video frame (404 without one)
    GET  /api/windows/{w}/filmstrip.png     the frames of the clip's windows, the window outlined
    POST /api/answer      {claimant, cluster_id, window, kind, labels, annotator}
    POST /api/undo        {claimant, annotator, owner?}   take back this page's latest answer
    GET  /api/answers?limit=20              the latest current answers, newest first

Safety: media are addressed only by window ids, and only windows of the session's clusters are
served, from the media path recorded at ingest, after checking that the file is still the one
ingested (same size and modification time, no symbolic link swapped in). With a token, every
request must carry it (`X-Coincide-Token` header or `token` query parameter); with allowed
hosts, the Host header must name one (a web page elsewhere cannot reach a loopback server through
a rebound DNS name). POST bodies must be JSON (so a cross-site form cannot post) and small, and
are checked by the pydantic models of `bodies`. The
page's Content-Security-Policy allows only its own script and forbids inline script, and the page
writes label text only through textContent.
"""

from __future__ import annotations

import hmac
import html
import logging
import re
from collections.abc import Awaitable, Callable, Collection
from dataclasses import asdict
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, quote

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from coincide.errors import MediaError, UserError
from coincide.labelui import clips
from coincide.labelui.bodies import (
    MAX_LABEL_CHARS,
    AnswerBody,
    B,
    BodyError,
    NextBody,
    UndoBody,
    parse_body,
)
from coincide.labelui.campaign import Campaign, Conflict, MediaUnavailable, Member, NotFound
from coincide.labelui.extras import extra_routes
from coincide.labelui.vocab import Vocabulary, suggest
from coincide.store.labels import ANSWER_KINDS, Answer
from coincide.store.labels import Request as LabelRequest

logger = logging.getLogger(__name__)

TOKEN_HEADER = "x-coincide-token"
MAX_BODY_BYTES = 64 * 1024
_DIGITS = re.compile(r"^[0-9]{1,18}$")

STATIC_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "extra.js": "text/javascript; charset=utf-8",  # coincide.labelui.extras
    "style.css": "text/css; charset=utf-8",
}
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"media-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; "
        b"frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
]


class ApiError(Exception):
    """A bad request: answered with `status` and `{"error": message}`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


# ---------------------------------------------------------------------------------------------
# Guard: token and security headers (the Host header is Starlette's TrustedHostMiddleware's)


class Guard:
    """ASGI middleware: checks the token, adds the security headers to every response."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token

    def _refusal(self, scope: Scope) -> JSONResponse | None:
        if self.token is None:
            return None
        headers = Headers(scope=scope)
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        given = headers.get(TOKEN_HEADER) or (query.get("token") or [""])[0]
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            return _error(
                401, "missing or wrong token; open the address with ?token= printed at start."
            )
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        refusal = self._refusal(scope)
        if refusal is not None:
            await refusal(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)


# ---------------------------------------------------------------------------------------------
# Request parsing


async def _body(request: Request, model: type[B]) -> B:
    """The POST body as `model`: JSON (so that a cross-site form cannot post: a page elsewhere
    sending JSON needs a CORS preflight, which this server never grants), at most
    MAX_BODY_BYTES, then checked by pydantic (`bodies.parse_body`)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise ApiError(415, "send the request body as JSON with Content-Type: application/json.")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ApiError(413, f"request body over {MAX_BODY_BYTES} bytes.")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise ApiError(413, f"request body over {MAX_BODY_BYTES} bytes.")
    try:
        return parse_body(model, body)
    except BodyError as err:
        raise ApiError(400, str(err)) from err


def _query_int(request: Request, name: str, default: int | None, low: int, high: int) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    if not _DIGITS.match(raw) or not low <= int(raw) <= high:
        raise ApiError(400, f"query parameter '{name}' must be an integer in [{low}, {high}].")
    return int(raw)


# ---------------------------------------------------------------------------------------------
# Views


def _member_json(member: Member) -> dict[str, Any]:
    span = member.span
    return {
        "window": member.window,
        "cluster_id": member.cluster_id,
        "media_name": member.media_name,
        "time_s": member.time_s,
        "has_frame": member.has_frame,
        "clip": {
            "start_s": span.start_s,
            "end_s": span.end_s,
            "window_start_s": span.window_start_s,
            "window_end_s": span.window_end_s,
        },
    }


def _answer_json(answer: Answer, campaign: Campaign) -> dict[str, Any]:
    member = campaign.member(answer.window_index, check=False)
    return {
        "cluster_id": answer.cluster_id,
        "window": answer.window_index,
        "labels": list(answer.labels),
        "kind": answer.kind,
        "annotator": answer.annotator,
        "answered_at": answer.answered_at.isoformat(),
        "cluster_size": campaign.cluster_size(answer.cluster_id),
        "media_name": member.media_name,
        "time_s": member.time_s,
    }


def _request_json(request: LabelRequest, campaign: Campaign) -> dict[str, Any]:
    return {
        "cluster_id": request.cluster_id,
        "position": request.position,
        "cluster_size": campaign.cluster_size(request.cluster_id),
        "member": _member_json(campaign.member(request.window_index)),
        "window": request.window_index,
    }


def _image(png: bytes) -> Response:
    return Response(png, media_type="image/png")


def create_app(
    campaign: Campaign,
    vocabulary: Vocabulary,
    *,
    token: str | None = None,
    allowed_hosts: Collection[str] | None = None,
    annotator: str | None = None,
) -> ASGIApp:
    """The labeling page's app for one campaign.

    Args:
        campaign: what is labeled; every answer goes through its label store.
        vocabulary: terms offered by the label field's autocomplete.
        token: when set, every request must carry it (header or `token` query parameter).
        allowed_hosts: when set, the Host header names allowed (without port).
        annotator: default annotator name shown in the page's name field.
    """
    static = resources.files("coincide.labelui") / "static"
    static_files = {name: (static / name).read_bytes() for name in STATIC_TYPES}

    def static_response(name: str) -> Response:
        return Response(static_files[name], media_type=STATIC_TYPES[name])

    # The page's own script and style need the token too; the page is static otherwise.
    token_query = "" if token is None else "?token=" + html.escape(quote(token, safe=""))
    page = static_files["index.html"].replace(b"{{token_query}}", token_query.encode())

    async def index(request: Request) -> Response:
        return Response(page, media_type=STATIC_TYPES["index.html"])

    async def static_file(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in static_files or name == "index.html":
            raise ApiError(404, f"no static file {name!r}.")
        return static_response(name)

    async def state(request: Request) -> Response:
        progress = await run_in_threadpool(campaign.progress)
        return JSONResponse(
            {
                "session": campaign.session.name,
                "progress": asdict(progress),
                "annotator": annotator or "",
                "context_s": campaign.context_s,
                "lease_s": campaign.lease_s,
                "vocabulary_size": len(vocabulary),
                "answer_kinds": list(ANSWER_KINDS),
            }
        )

    async def vocab(request: Request) -> Response:
        query = request.query_params.get("q", "")
        if len(query) > MAX_LABEL_CHARS:
            raise ApiError(400, f"query parameter 'q' is longer than {MAX_LABEL_CHARS} characters.")
        limit = _query_int(request, "limit", 20, 1, 200)
        assert limit is not None
        used = await run_in_threadpool(campaign.label_counts)
        terms = suggest(vocabulary, used, query, limit)
        return JSONResponse({"terms": [asdict(t) for t in terms]})

    async def next_request(request: Request) -> Response:
        claimant = (await _body(request, NextBody)).claimant

        def work() -> dict[str, Any]:
            claimed = campaign.claim(claimant)
            return {
                "request": None if claimed is None else _request_json(claimed, campaign),
                "progress": asdict(campaign.progress()),
            }

        return JSONResponse(await run_in_threadpool(work))

    async def random_member(request: Request) -> Response:
        cluster_id = request.path_params["cluster_id"]
        exclude = _query_int(request, "exclude", None, 0, 2**62)
        window = await run_in_threadpool(campaign.random_member, cluster_id, exclude)
        return JSONResponse({"member": _member_json(campaign.member(window))})

    async def audio(request: Request) -> Response:
        member = campaign.member(request.path_params["window"])
        path = campaign.media_file(member)
        samples = await run_in_threadpool(clips.decode_span, path, member.span)
        return Response(clips.wav_bytes(samples), media_type="audio/wav")

    def _spectrogram(member: Member) -> bytes:
        windows = campaign.neighbours(member.window, member.span)
        logmel = campaign.store.logmel[windows]
        return clips.spectrogram_png(logmel, campaign.window_times(windows), member.span)

    async def spectrogram(request: Request) -> Response:
        member = campaign.member(request.path_params["window"])
        return _image(await run_in_threadpool(_spectrogram, member))

    async def frame(request: Request) -> Response:
        member = campaign.member(request.path_params["window"])
        if not member.has_frame:
            raise ApiError(404, f"window {member.window} has no video frame.")
        image = await run_in_threadpool(campaign.store.frames.__getitem__, member.window)
        return _image(clips.frame_png(image))

    def _filmstrip(member: Member) -> bytes:
        windows = campaign.neighbours(member.window, member.span)
        framed = [w for w in windows if campaign.has_frame(w)]
        images = dict(zip(framed, campaign.store.frames[framed], strict=True)) if framed else {}
        return clips.filmstrip_png([images.get(w) for w in windows], windows.index(member.window))

    async def filmstrip(request: Request) -> Response:
        member = campaign.member(request.path_params["window"])
        return _image(await run_in_threadpool(_filmstrip, member))

    async def answer(request: Request) -> Response:
        body = await _body(request, AnswerBody)

        def work() -> dict[str, Any]:
            given = campaign.answer(
                body.claimant,
                body.cluster_id,
                body.window,
                body.kind,
                body.labels,
                body.annotator,
                body.owner,
            )
            return {
                "answer": _answer_json(given, campaign),
                "progress": asdict(campaign.progress()),
            }

        return JSONResponse(await run_in_threadpool(work))

    async def undo(request: Request) -> Response:
        body = await _body(request, UndoBody)

        def work() -> dict[str, Any]:
            undone = campaign.undo(body.claimant, body.annotator, body.owner)
            return {
                "undone": None if undone is None else _answer_json(undone, campaign),
                "progress": asdict(campaign.progress()),
            }

        return JSONResponse(await run_in_threadpool(work))

    async def answers(request: Request) -> Response:
        limit = _query_int(request, "limit", 20, 1, 1000)

        def work() -> list[dict[str, Any]]:
            current = sorted(campaign.current_answers(), key=lambda a: a.id, reverse=True)
            return [_answer_json(a, campaign) for a in current[:limit]]

        return JSONResponse({"answers": await run_in_threadpool(work)})

    routes = [
        Route("/", index),
        Route("/static/{name:str}", static_file),
        Route("/api/state", state),
        Route("/api/vocab", vocab),
        Route("/api/next", next_request, methods=["POST"]),
        Route("/api/clusters/{cluster_id:int}/random-member", random_member),
        Route("/api/windows/{window:int}/audio.wav", audio),
        Route("/api/windows/{window:int}/spectrogram.png", spectrogram),
        Route("/api/windows/{window:int}/frame.png", frame),
        Route("/api/windows/{window:int}/filmstrip.png", filmstrip),
        Route("/api/answer", answer, methods=["POST"]),
        Route("/api/undo", undo, methods=["POST"]),
        Route("/api/answers", answers),
        *extra_routes(campaign),
    ]
    handlers: dict[Any, Callable[[Request, Any], Awaitable[Response]]] = {
        ApiError: _on_api_error,
        HTTPException: _on_http_error,
        NotFound: _on_not_found,
        Conflict: _on_conflict,
        MediaUnavailable: _on_media_unavailable,
        UserError: _on_user_error,
        MediaError: _on_media_error,
        Exception: _on_bug,
    }
    # A Host header naming none of `allowed_hosts` is refused (400) before any route runs: a
    # page elsewhere cannot reach a loopback server through a DNS name rebound to 127.0.0.1.
    hosts = (
        []
        if allowed_hosts is None
        else [Middleware(TrustedHostMiddleware, list(allowed_hosts), www_redirect=False)]
    )
    app = Starlette(routes=routes, exception_handlers=handlers, middleware=hosts)
    return Guard(app, token)


# ---------------------------------------------------------------------------------------------
# Errors: JSON messages only


async def _on_api_error(request: Request, exc: ApiError) -> Response:
    return _error(exc.status, exc.message)


async def _on_http_error(request: Request, exc: HTTPException) -> Response:
    if exc.status_code == 404:
        return _error(404, f"no such address: {request.url.path}")
    if exc.status_code == 405:
        return _error(405, f"{request.method} is not allowed on {request.url.path}.")
    return _error(exc.status_code, str(exc.detail))


async def _on_not_found(request: Request, exc: NotFound) -> Response:
    return _error(404, f"{exc}.")


async def _on_conflict(request: Request, exc: Conflict) -> Response:
    return _error(409, str(exc))


async def _on_media_unavailable(request: Request, exc: MediaUnavailable) -> Response:
    return _error(404 if exc.gone else 409, str(exc))


async def _on_user_error(request: Request, exc: UserError) -> Response:
    return _error(400, str(exc))


async def _on_media_error(request: Request, exc: MediaError) -> Response:
    return _error(422, f"the media file cannot be decoded: {exc}.")


async def _on_bug(request: Request, exc: Exception) -> Response:
    logger.error("labeling page: %s %s failed", request.method, request.url.path, exc_info=exc)
    return _error(500, "internal error; the server log has the details.")
