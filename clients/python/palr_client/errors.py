"""gRPC failures as Python exceptions: PalrError carries the status code and palr's message.

palr's messages say what to change (recommender.proto and admin.proto list which code means
what); the subclasses let callers catch the common ones by name:

    try:
        client.recommend(history)
    except palr_client.InvalidArgument as e:   # e.code, e.details
        ...
"""

from __future__ import annotations

import grpc


class PalrError(Exception):
    """A call that did not succeed: `code` is the grpc.StatusCode, `details` palr's message."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class InvalidArgument(PalrError):
    """The request is wrong (empty history, unknown item id, k out of bounds, ...)."""


class NotFound(PalrError):
    """Unknown retriever or adapter (the message lists the loaded ones)."""


class AlreadyExists(PalrError):
    """Admin: LoadAdapter of a name already loaded, without `replace`."""


class FailedPrecondition(PalrError):
    """Admin: a reload that cannot be applied (nothing changed), or unloading the merged or the
    default adapter."""


class Unauthenticated(PalrError):
    """No token, or one the server does not accept."""


class PermissionDenied(PalrError):
    """The token's scopes do not cover this call (the message names the scope to add)."""


class ResourceExhausted(PalrError):
    """The server is busy or the caller over its rate limit: retry later. (Admin: LoadAdapter
    beyond `[model] max_adapters`, or no memory for the adapter's weights.)"""


class DeadlineExceeded(PalrError):
    """The call's timeout passed (or the server refused work that could not finish in it)."""


class Unavailable(PalrError):
    """No connection, a failed TLS handshake, a server shutting down, a retriever out of reach."""


_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
}


def from_rpc_error(error: grpc.RpcError) -> PalrError:
    """The PalrError (subclass, where there is one) for a failed grpc call."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = (error.details() if hasattr(error, "details") else None) or str(error)
    return _BY_CODE.get(code, PalrError)(code, details)
