"""The HTTP status of each service error, shared by the adapters that speak HTTP (api/ and web/)."""

from __future__ import annotations

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


def message_of(error: Exception) -> str:
    """The error's own message, whole: str() of a KeyError quotes it, and stripping those quotes would cut its own."""
    return str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
