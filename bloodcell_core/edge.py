"""The HTTP edge that the API (``api/``) and the review console (``web/``) share, so both speak one way.

- the status of each service error, and ONE error handler: an HTML page under /ui (the console's renderer),
  JSON everywhere else and for the console's own script;
- ONE upload reader (request size, multipart limits, each file's name and limits) and ONE file-name sanitiser;
- ONE sha256 path-parameter type (``ImageSha256``, ``FieldSha256``), checked before a route runs;
- the headers of content-addressed images, and the app's settings and local client as dependencies.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Path, Request, Response
from fastapi.exception_handlers import http_exception_handler
from sqlalchemy.exc import DataError
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from bloodcell_core.clients.local import Client
from bloodcell_core.config import Settings
from bloodcell_core.plugin_manager import UnknownPlugin
from bloodcell_core.service.errors import Conflict, Forbidden, LimitExceeded, NotFound, ServiceError, error_message
from bloodcell_core.service.image_store import ImageNotFound
from bloodcell_core.service.submission import check_image_limits

CONSOLE_PREFIX = "/ui"
SHA256 = re.compile(r"^[0-9a-f]{64}$")
NOT_A_SHA256 = "not a sha256 (64 lowercase hex digits)"

# Subclasses before ServiceError: the first entry an error is an instance of gives its status.
ERROR_STATUS: list[tuple[type[Exception], int]] = [
    (NotFound, 404),
    (Forbidden, 403),
    (Conflict, 409),
    (LimitExceeded, 413),
    (ServiceError, 422),
    (UnknownPlugin, 404),
    (ImageNotFound, 404),
]
SERVICE_ERRORS = tuple(error for error, _ in ERROR_STATUS)

# The console's error page: (request, status, message, headers) -> a page with the console's navigation.
ErrorPage = Callable[[Request, int, str, dict[str, str]], Awaitable[Response]]


# --- errors ------------------------------------------------------------------------------------------------


def status_of(error: Exception) -> int:
    """The HTTP status for one of SERVICE_ERRORS."""
    return next(code for kind, code in ERROR_STATUS if isinstance(error, kind))


def as_http_error(error: Exception) -> StarletteHTTPException:
    """Any error the edge answers, as the HTTP error it is answered with."""
    if isinstance(error, StarletteHTTPException):
        return error
    if isinstance(error, DataError):
        # a value the database cannot hold, e.g. a NUL byte in a sample id (PostgreSQL text refuses it): the caller's error
        reason = (str(error.orig).splitlines() or ["refused by the database"])[0]
        return StarletteHTTPException(422, f"invalid value: {reason}")
    return StarletteHTTPException(status_of(error), error_message(error))


def wants_a_page(request: Request) -> bool:
    """A person's request to the console (not the console's script, which sends X-Requested-With: console)."""
    return request.url.path.startswith(CONSOLE_PREFIX) and request.headers.get("x-requested-with") != "console"


def install_error_handler(app: FastAPI, console_page: ErrorPage) -> None:
    """The one handler of HTTP, service and database-value errors: the console's page for a person under /ui,
    ``{"detail": message}`` for everything else."""

    async def answer(request: Request, error: Exception) -> Response:
        http_error = as_http_error(error)
        if wants_a_page(request):
            return await console_page(request, http_error.status_code, str(http_error.detail), dict(http_error.headers or {}))
        return await http_exception_handler(request, http_error)

    for error_type in (StarletteHTTPException, DataError, *SERVICE_ERRORS):
        app.add_exception_handler(error_type, answer)


# --- uploads -----------------------------------------------------------------------------------------------


def upload_name(filename: str | None, index: int) -> str:
    """An uploaded file's name as a label, never a path: its last part (a client's folders are not kept),
    printable characters only, at most 255; an empty name, ``.`` or ``..`` becomes ``image-INDEX``."""
    name = re.split(r"[/\\]", filename or "")[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip()[:255]
    return name if name not in ("", ".", "..") else f"image-{index}"


async def read_form(request: Request, settings: Settings, max_fields: int) -> FormData:
    """A multipart body within BLOODCELL_MAX_REQUEST_BYTES and BLOODCELL_MAX_IMAGES_PER_SAMPLE files, read only
    after the caller is known (call it from the route, after its dependencies)."""
    length = request.headers.get("content-length")
    if length is None or not length.isdigit():
        raise HTTPException(411, "a Content-Length header is required")
    if int(length) > settings.max_request_bytes:
        raise HTTPException(
            413, f"request of {int(length):,} bytes exceeds {settings.max_request_bytes:,} (BLOODCELL_MAX_REQUEST_BYTES)"
        )
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise HTTPException(415, "send multipart/form-data with accession_id and images (files)")
    limit = settings.max_images_per_sample
    try:
        return await request.form(max_files=limit + 1, max_fields=max_fields)
    except StarletteHTTPException as exc:  # Starlette's multipart parser: malformed body, or over its part counts
        if "Too many" in str(exc.detail):
            raise HTTPException(413, f"more than {limit} images or fields in one request (BLOODCELL_MAX_IMAGES_PER_SAMPLE)") from None
        reason = getattr(exc.__context__, "__cause__", None)  # python-multipart's own words, e.g. a header too long
        raise HTTPException(400, f"malformed multipart/form-data body: {reason or exc.detail}") from None


async def read_files(parts: list[UploadFile | str], settings: Settings, part: str) -> list[tuple[str, bytes]]:
    """Each file part as (sanitised name, bytes), each within the byte and pixel limits."""
    files = []
    for k, upload in enumerate(parts):
        if not isinstance(upload, UploadFile):
            raise HTTPException(422, f"{part} part {k} is a text field, not a file")
        name = upload_name(upload.filename, k)
        data = await upload.read(settings.max_image_bytes + 1)  # never more than one byte over the limit
        check_image_limits(settings, name, data)
        files.append((name, data))
    return files


# --- path parameters and headers ---------------------------------------------------------------------------


def _sha256_of_path(name: str) -> Callable[[str], str]:
    # a default, not an annotation: annotations are strings here, and NAME would not resolve in one
    def checked(value: str = Path(alias=name, description="64 lowercase hex digits")) -> str:
        if not SHA256.match(value):
            raise HTTPException(422, NOT_A_SHA256)
        return value

    return checked


# A stored image's or field's sha256 in the path. Declare it after the route's authentication, so that a caller
# without a token or session hears that first.
ImageSha256 = Annotated[str, Depends(_sha256_of_path("image_sha256"))]
FieldSha256 = Annotated[str, Depends(_sha256_of_path("field_sha256"))]


def image_headers(image_sha256: str) -> dict[str, str]:
    """Headers of a stored image served by its sha256: its bytes never change, so a browser keeps it a day
    without asking again; never sniffed as anything but the type it is sent as (stored bytes may be any bytes)."""
    return {
        "ETag": f'"{image_sha256}"',
        "Cache-Control": "private, max-age=86400, immutable",
        "X-Content-Type-Options": "nosniff",
    }


# --- the app's settings and client -------------------------------------------------------------------------


def app_settings(request: Request) -> Settings:
    return request.app.state.settings


def app_client(request: Request) -> Client:
    return request.app.state.client


SettingsDep = Annotated[Settings, Depends(app_settings)]
ClientDep = Annotated[Client, Depends(app_client)]
