"""The service's errors: each maps to one HTTP status in the API and to a clear message in the CLI."""


class ServiceError(ValueError):
    """A request that cannot be carried out as asked (bad id, bad value). The HTTP API answers 422."""


class NotFound(ServiceError):
    """No such sample, cell, model version or client (HTTP 404)."""


class Conflict(ServiceError):
    """The request contradicts the stored state, e.g. an idempotency key reused for another request (HTTP 409)."""


class LimitExceeded(ServiceError):
    """Too many bytes, images or pixels (HTTP 413)."""


class Forbidden(ServiceError):
    """The person's role does not allow it, e.g. a technologist signing off a sample with blasts (HTTP 403)."""


def error_message(error: Exception) -> str:
    """A service error's message as written: a KeyError (``image_store.ImageNotFound``) would otherwise come quoted."""
    return str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
