"""What the adapters that speak HTTP (api/ and web/) share: the status of each service error, the one
file-name sanitiser for uploads, and the headers of content-addressed images."""

from __future__ import annotations

import re

from bloodcell_core.plugin_manager import UnknownPlugin
from bloodcell_core.service.errors import Conflict, Forbidden, LimitExceeded, NotFound, ServiceError
from bloodcell_core.service.image_store import ImageNotFound

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


def status_of(error: Exception) -> int:
    """The HTTP status for one of SERVICE_ERRORS."""
    return next(code for kind, code in ERROR_STATUS if isinstance(error, kind))


def error_message(error: Exception) -> str:
    """A service error's message as written: a KeyError (ImageNotFound) would otherwise come quoted."""
    return str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)


def upload_name(filename: str | None, index: int) -> str:
    """An uploaded file's name as a label, never a path: its last part (a client's folders are not kept),
    printable characters only, at most 255; an empty name, ``.`` or ``..`` becomes ``image-INDEX``."""
    name = re.split(r"[/\\]", filename or "")[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip()[:255]
    return name if name not in ("", ".", "..") else f"image-{index}"


def image_headers(image_sha256: str) -> dict[str, str]:
    """Headers of a stored image served by its sha256: its bytes never change, so a browser keeps it a day
    without asking again; never sniffed as anything but the type it is sent as (stored bytes may be any bytes)."""
    return {
        "ETag": f'"{image_sha256}"',
        "Cache-Control": "private, max-age=86400, immutable",
        "X-Content-Type-Options": "nosniff",
    }
