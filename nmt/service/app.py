"""`nmt-serve`'s HTTP application: FastAPI routes over the engine, limits, errors and the page.

Every answer is a status code that means what it says: 400 for bad JSON or options (the message
names the field), 413 for a body over the limit, 503 with Retry-After when the queue is full, 504
when a request's deadline passes, 500 only for a bug; the model stays loaded after any of them.
"""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import metadata, resources
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from nmt.checkpoint import CheckpointError
from nmt.options import ConfigError, InferenceOptions, SearchOptions
from nmt.service.engine import Engine, Expired, LoadedModel, QueueFull, WorkerLost, setting, translation_dict
from nmt.service.inspect import inspect_payload
from nmt.service.schemas import (
    InspectRequest,
    InspectResponse,
    ModelInfo,
    ReloadRequest,
    TranslateRequest,
    TranslateResponse,
    offered,
    options_of,
    request_name,
)

log = logging.getLogger(__name__)

STATIC = resources.files("nmt.service") / "static"
# What a checkpoint that fails to load raises: the old model goes on serving.
RELOAD_ERRORS = (CheckpointError, ConfigError, OSError, ValueError, RuntimeError)


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = setting(1 << 20, "largest request body in bytes (beyond: 413)")
    max_segments: int = setting(64, "segments per request (beyond: 400)")
    max_chars: int = setting(2000, "characters per segment (beyond: 400)")
    max_beam: int = setting(16, "largest beam, or number of samples, a request may ask for (beyond: 400)")
    max_nbest: int = setting(16, "largest nbest a request may ask for (beyond: 400)")
    timeout_s: float = setting(30.0, "seconds from a request's arrival to its answer (beyond: 504)")


class ServiceError(Exception):
    """An answer other than 200, with the message for the client."""

    def __init__(self, status: int, message: str, field: str | None = None, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.field, self.headers = status, message, field, headers


@dataclass
class Service:
    """What the routes serve with: the engine, the loading options of a reload, the limits."""

    engine: Engine
    inference: InferenceOptions
    limits: Limits
    inspect_lock: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(1))  # replays are long, rare

    async def reload_logged(self, checkpoint: str | None) -> None:
        try:
            await run_in_threadpool(self.engine.reload, checkpoint, self.inference)
        except RELOAD_ERRORS as error:
            log.error("reload failed, the old model goes on serving: %s", error)


def _service(request: Request) -> Service:
    return request.app.state.service


ServiceNow = Annotated[Service, Depends(_service)]
router = APIRouter()


def create_app(engine: Engine, inference: InferenceOptions, limits: Limits) -> FastAPI:
    service = Service(engine, inference, limits)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        loop = asyncio.get_running_loop()
        try:  # SIGHUP reloads the checkpoint, as POST /reload does
            loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(service.reload_logged(None)))
        except (NotImplementedError, RuntimeError, ValueError):
            log.debug("no SIGHUP here: reload through POST /reload")
        yield
        engine.stop()  # uvicorn has finished the requests in flight

    app = FastAPI(
        title="nmt-serve",
        summary="Translation with an LSTM encoder-decoder, and what its gates and attention do.",
        version=_version(),
        lifespan=lifespan,
    )
    app.state.engine, app.state.service = engine, service
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _bad_request)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _bug)
    app.include_router(router)
    return app


# --- errors ---------------------------------------------------------------------------------------
async def _service_error(request: Request, error: ServiceError) -> JSONResponse:
    content: dict[str, Any] = {"error": error.message}
    if error.field:
        content["field"] = error.field
    return JSONResponse(content, status_code=error.status, headers=error.headers)


async def _bad_request(request: Request, error: RequestValidationError) -> JSONResponse:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
    message = first.get("msg", "invalid request")
    if first.get("type") == "json_invalid":
        message, where = "the body is not valid JSON", ""
    return JSONResponse({"error": f"{where}: {message}" if where else message, "field": where or None}, status_code=400)


async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    message = str(error.detail)
    if error.status_code == 400:  # FastAPI could not decode the body (invalid UTF-8, ...)
        message = "the body is not valid JSON in UTF-8"
    return JSONResponse({"error": message}, status_code=error.status_code, headers=error.headers)


async def _bug(request: Request, error: Exception) -> JSONResponse:
    log.exception("a bug answered 500")
    return JSONResponse({"error": f"internal error: {type(error).__name__}"}, status_code=500)


# --- routes ---------------------------------------------------------------------------------------
@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def page() -> str:
    return (STATIC / "index.html").read_text(encoding="utf-8")


@router.get("/health")
async def health() -> dict:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/ready")
async def ready(service: ServiceNow) -> dict:
    """A model is loaded and the search threads run."""
    return {"status": "ready", "sha256": service.engine.loaded.sha256}


@router.get("/model", response_model=ModelInfo)
async def model(service: ServiceNow) -> dict:
    """Languages, cells, attention, parameters, the checkpoint's sha256 and the precision."""
    return service.engine.loaded.info


@router.post("/translate", response_model=TranslateResponse)
async def translate(body: TranslateRequest, service: ServiceNow) -> dict:  # type: ignore[valid-type]
    """Translate every segment, in order; an empty segment gives an empty text."""
    started = time.perf_counter()
    limits = service.limits
    options = _search_options(body, limits)
    _check_segments(body.segments, limits)
    try:
        job = service.engine.submit(body.segments, options, limits.timeout_s)
    except QueueFull as error:
        raise ServiceError(503, f"busy: {error}; retry later", headers={"Retry-After": "1"}) from None
    try:
        translations = await asyncio.wait_for(asyncio.wrap_future(job.future), limits.timeout_s)
    except (TimeoutError, Expired):
        job.future.cancel()
        raise ServiceError(504, f"not translated within {limits.timeout_s:g} s") from None
    except WorkerLost as error:
        raise ServiceError(503, str(error), headers={"Retry-After": "1"}) from None
    return {
        "translations": [translation_dict(t, options.nbest) for t in translations],
        "model": job.loaded.sha256,
        "ms": round(1000 * (time.perf_counter() - started), 2),
    }


@router.post("/inspect", response_model=InspectResponse)
async def inspect(body: InspectRequest, service: ServiceNow) -> dict:
    """One sentence: its greedy translation, the attention matrix, and per layer and direction
    the gates and the cell-state norm at every step."""
    _check_segments([body.sentence], service.limits, field="sentence")
    if not body.sentence.strip():
        raise ServiceError(400, "sentence: empty", field="sentence")
    loaded = service.engine.loaded
    async with service.inspect_lock:
        return await run_in_threadpool(inspect_payload, loaded, body.sentence)


@router.post("/reload", response_model=ModelInfo)
async def reload(service: ServiceNow, body: ReloadRequest | None = None) -> dict:
    """Load a checkpoint (default: the one serving, re-read) and swap it in; requests in
    flight finish on the old model. A checkpoint that fails to load leaves the old one."""
    checkpoint = body.checkpoint if body else None
    try:
        loaded: LoadedModel = await run_in_threadpool(service.engine.reload, checkpoint, service.inference)
    except RELOAD_ERRORS as error:
        raise ServiceError(422, f"not loaded, the old model goes on serving: {error}", field="checkpoint") from None
    return loaded.info


REQUEST_NAMES = {spec.name: request_name(spec) for spec in offered(SearchOptions)}


def _search_options(body: BaseModel, limits: Limits) -> SearchOptions:
    try:
        options = options_of(body)
    except ConfigError as error:  # its message starts with the option's name, as nmt-translate's
        message = str(error)
        for name, in_request in REQUEST_NAMES.items():
            message = re.sub(rf"\b{name}\b", in_request, message)
        field_name = re.match(r"\w+", message)
        raise ServiceError(400, message, field=field_name.group() if field_name else None) from None
    for name, value, limit in (
        ("beam_size", options.beam_size, limits.max_beam),
        ("nbest", options.nbest, limits.max_nbest),
        ("samples", options.sample_count if options.sample else 0, limits.max_beam),
    ):
        if value > limit:
            field_name = REQUEST_NAMES[name]
            raise ServiceError(400, f"{field_name}: {value} is over this server's limit of {limit}", field=field_name)
    return options


def _check_segments(segments: list[str], limits: Limits, field: str = "segments") -> None:
    if len(segments) > limits.max_segments:
        raise ServiceError(
            400, f"{field}: {len(segments)} segments, at most {limits.max_segments} per request", field=field
        )
    for number, segment in enumerate(segments):
        if len(segment) > limits.max_chars:
            raise ServiceError(
                400,
                f"{field}[{number}]: {len(segment)} characters, at most {limits.max_chars} per segment",
                field=field,
            )


def _version() -> str:
    try:
        return metadata.version("nmt")
    except metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


class BodyLimit:
    """413 for a body over `max_bytes`: by its Content-Length, or counted as it streams in (the
    body is read here, at most `max_bytes` of it, and handed on)."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            await self._refuse(scope, send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client left
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                await self._refuse(scope, send)
                return
        body, sent = b"".join(chunks), False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()  # after the body: disconnects
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope, send) -> None:
        response = JSONResponse({"error": f"the body is over {self.max_bytes} bytes"}, status_code=413)
        await response(scope, _no_receive, send)


async def _no_receive():
    return {"type": "http.disconnect"}
