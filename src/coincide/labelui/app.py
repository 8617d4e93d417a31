"""The labeling page's ASGI app (Starlette): a static page and a small JSON API.

Endpoints (every error is a JSON object `{"error": "..."}` with a 4xx status, or 500 with no
details for a bug; never an HTML traceback):

    GET  /                                  the page (static HTML; its script is /static/app.js)
    GET  /static/app.js, /static/style.css  the page's script and style (a fixed list of files)
    GET  /api/state                         session, budget, progress, default annotator
    GET  /api/vocab?q=dog&limit=20          vocabulary terms matching q: [{name, description}]
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
a rebound DNS name). POST bodies must be JSON (so a cross-site form cannot post) and small. The
page's Content-Security-Policy allows only its own script and forbids inline script, and the page
writes label text only through textContent.
"""

from __future__ import annotations

import hmac
import html
import json
import logging
import os
import re
from collections.abc import Awaitable, Callable, Collection
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from coincide.errors import MediaError, UserError
from coincide.labelui import clips
from coincide.labelui.campaign import Campaign, Conflict, Member, NotFound
from coincide.labelui.extras import extra_routes
from coincide.labelui.vocab import Vocabulary
from coincide.store.labels import ANSWER_KINDS, Answer
from coincide.store.labels import Request as LabelRequest

logger = logging.getLogger(__name__)

TOKEN_HEADER = "x-coincide-token"
MAX_BODY_BYTES = 64 * 1024
MAX_LABELS = 32
MAX_LABEL_CHARS = 200
MAX_NAME_CHARS = 100
RESERVED_ANNOTATORS = {"oracle"}  # the simulated annotator of `coincide label --oracle`
_CLAIMANT = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
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
# Guard: token, host, security headers


class Guard:
    """ASGI middleware: checks the token and Host header, adds the security headers."""

    def __init__(
        self, app: ASGIApp, token: str | None, allowed_hosts: Collection[str] | None
    ) -> None:
        self.app = app
        self.token = token
        self.allowed_hosts = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}

    def _refusal(self, scope: Scope) -> JSONResponse | None:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        if self.allowed_hosts is not None:
            host = headers.get("host", "").lower()
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if name not in self.allowed_hosts:
                return _error(
                    403, f"host {host!r} is not served; open the address printed at start."
                )
        if self.token is not None:
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


async def _json_body(request: Request) -> dict[str, Any]:
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
        payload = json.loads(body)
    except ValueError as err:
        raise ApiError(400, f"request body is not valid JSON ({err}).") from err
    except RecursionError as err:  # [[[[...]]]] 30,000 deep: no answer is nested like that
        raise ApiError(400, "request body is nested too deeply to be an answer.") from err
    if not isinstance(payload, dict):
        raise ApiError(400, "request body must be a JSON object.")
    return payload


def _int_field(payload: dict[str, Any], name: str) -> int:
    value = payload.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"field '{name}' must be an integer.")
    return value


def _text_field(payload: dict[str, Any], name: str, max_chars: int = MAX_NAME_CHARS) -> str:
    value = payload.get(name)
    if not isinstance(value, str) or not value.strip():
        raise ApiError(400, f"field '{name}' must be a non-empty string.")
    if len(value) > max_chars:
        raise ApiError(400, f"field '{name}' is longer than {max_chars} characters.")
    return value.strip()


def _claimant(payload: dict[str, Any]) -> str:
    claimant = payload.get("claimant")
    if not isinstance(claimant, str) or not _CLAIMANT.match(claimant):
        raise ApiError(400, "field 'claimant' must be 1-64 letters, digits, '-' or '_'.")
    return claimant


def _owner(payload: dict[str, Any]) -> str | None:
    """The page's private key (kept in the browser across tabs); answers given with it can be
    undone only with it. Optional: a client without one owns its answers by its claimant."""
    owner = payload.get("owner")
    if owner is None:
        return None
    if not isinstance(owner, str) or not _CLAIMANT.match(owner):
        raise ApiError(400, "field 'owner' must be 1-64 letters, digits, '-' or '_'.")
    return owner


def _annotator(payload: dict[str, Any]) -> str:
    annotator = _text_field(payload, "annotator")
    if annotator.casefold() in RESERVED_ANNOTATORS:
        raise ApiError(400, f"annotator name '{annotator}' is reserved; type your own name.")
    return annotator


def _labels(payload: dict[str, Any]) -> list[str]:
    labels = payload.get("labels", [])
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise ApiError(400, "field 'labels' must be a list of strings.")
    if len(labels) > MAX_LABELS:
        raise ApiError(400, f"at most {MAX_LABELS} labels per answer.")
    cleaned = [" ".join(label.split()) for label in labels]
    if any(not label for label in cleaned):
        raise ApiError(400, "a label is empty; remove it or type some text.")
    if any(len(label) > MAX_LABEL_CHARS for label in cleaned):
        raise ApiError(400, f"a label is longer than {MAX_LABEL_CHARS} characters.")
    return cleaned


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


def _media_file(campaign: Campaign, member: Member) -> Path:
    """The ingested media file of a member, checked to be the very file that was ingested."""
    record = campaign.media_record(member.window)
    path = Path(str(record["media_path"]))
    name = member.media_name
    # Ingest stores resolved absolute paths: anything else, or a link swapped in, is refused.
    if not path.is_absolute() or os.path.realpath(path) != str(path):
        raise ApiError(409, f"media file {name} is now reached through a link; ingest it again.")
    try:
        stat = os.stat(path)
    except FileNotFoundError as err:
        raise ApiError(404, f"media file {name} is gone from where it was ingested.") from err
    except OSError as err:
        raise ApiError(409, f"media file {name} cannot be read ({err.strerror}).") from err
    if (stat.st_size, stat.st_mtime_ns) != (int(record["size"]), int(record["mtime_ns"])):
        raise ApiError(409, f"media file {name} changed since it was ingested; ingest it again.")
    return path


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
        terms = vocabulary.search(query, limit)
        return JSONResponse({"terms": [asdict(t) for t in terms]})

    async def next_request(request: Request) -> Response:
        claimant = _claimant(await _json_body(request))

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
        path = _media_file(campaign, member)
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
        payload = await _json_body(request)
        claimant = _claimant(payload)
        cluster_id = _int_field(payload, "cluster_id")
        window = _int_field(payload, "window")
        kind = payload.get("kind")
        if kind not in ANSWER_KINDS:
            raise ApiError(400, f"field 'kind' must be one of {', '.join(ANSWER_KINDS)}.")
        labels = _labels(payload)
        annotator = _annotator(payload)
        owner = _owner(payload)

        def work() -> dict[str, Any]:
            given = campaign.answer(claimant, cluster_id, window, kind, labels, annotator, owner)
            return {
                "answer": _answer_json(given, campaign),
                "progress": asdict(campaign.progress()),
            }

        return JSONResponse(await run_in_threadpool(work))

    async def undo(request: Request) -> Response:
        payload = await _json_body(request)
        claimant = _claimant(payload)
        annotator = _annotator(payload)
        owner = _owner(payload)

        def work() -> dict[str, Any]:
            undone = campaign.undo(claimant, annotator, owner)
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
        UserError: _on_user_error,
        MediaError: _on_media_error,
        Exception: _on_bug,
    }
    app = Starlette(routes=routes, exception_handlers=handlers)
    return Guard(app, token, allowed_hosts)


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


async def _on_user_error(request: Request, exc: UserError) -> Response:
    return _error(400, str(exc))


async def _on_media_error(request: Request, exc: MediaError) -> Response:
    return _error(422, f"the media file cannot be decoded: {exc}.")


async def _on_bug(request: Request, exc: Exception) -> Response:
    logger.error("labeling page: %s %s failed", request.method, request.url.path, exc_info=exc)
    return _error(500, "internal error; the server log has the details.")
