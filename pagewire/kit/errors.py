"""Domain errors shared by every service, each naming the gRPC status it maps to.

Domain modules raise these without importing grpc; the server bootstrap's
interceptor turns them into status codes. Messages must be safe to show: no
tokens, no message text, no personal data.
"""

from __future__ import annotations


class PagewireError(Exception):
    """Base of every expected failure; `status` is a grpc.StatusCode name."""

    status = "INTERNAL"


class InvalidArgument(PagewireError):
    """The caller sent something unusable; the message names the field."""

    status = "INVALID_ARGUMENT"

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class NotFound(PagewireError):
    """The thing asked for does not exist."""

    status = "NOT_FOUND"


class FailedPrecondition(PagewireError):
    """The request is valid but the system is not in a state to do it."""

    status = "FAILED_PRECONDITION"


class PermissionDenied(PagewireError):
    """The caller may not do this."""

    status = "PERMISSION_DENIED"


class Aborted(PagewireError):
    """A lock could not be had in time; the caller should retry."""

    status = "ABORTED"


class Unavailable(PagewireError):
    """A dependency (PostgreSQL, Redis, Graph, another service) cannot be reached."""

    status = "UNAVAILABLE"


class DataLoss(PagewireError):
    """Stored data cannot be read back (for example a ciphertext that fails to decrypt)."""

    status = "DATA_LOSS"
