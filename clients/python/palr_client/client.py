"""Client: one gRPC channel to a palr server and a method per RPC of palr.v1.Recommender.

Item ids are strings (ints are accepted and sent as strings), histories oldest first. A count
left as None is the server's default (see model_info()). Every call has a deadline: the
client's `timeout` (seconds) unless the call gives its own. Failures raise PalrError.
"""

from __future__ import annotations

from collections.abc import Iterable
from os import PathLike

import grpc

from . import errors
from ._proto import recommender_pb2 as pb
from ._proto import recommender_pb2_grpc as pb_grpc
from .types import ModelInfo, Recommendation, Retrieval, RetrieverInfo, mode_value

DEFAULT_ADDR = "127.0.0.1:50051"

PemSource = str | PathLike | bytes


def _pem(source: PemSource | None) -> bytes | None:
    """A PEM given as bytes, or read from a file path."""
    if source is None or isinstance(source, bytes):
        return source
    with open(source, "rb") as f:
        return f.read()


def _ids(items: Iterable[str | int], what: str) -> list[str]:
    if isinstance(items, (str, bytes)):
        raise TypeError(f"{what} is a list of item ids, not one string: {items!r}")
    return [str(i) for i in items]


class _Default:
    """The type of `_DEFAULT`: a timeout left to the client class's default (None already
    means "no deadline")."""


_DEFAULT = _Default()


class _Connection:
    """One gRPC channel and what every call carries (token, deadline); Client and AdminClient
    add their stub (`_STUB`), defaults (`_DEFAULT_ADDR`, `_DEFAULT_TIMEOUT`) and one method per
    RPC. The arguments are described at Client."""

    _DEFAULT_ADDR: str
    _DEFAULT_TIMEOUT: float | None
    _STUB: type

    def __init__(
        self,
        addr: str | None = None,
        token: str | None = None,
        *,
        ca_cert: PemSource | None = None,
        client_cert: PemSource | None = None,
        client_key: PemSource | None = None,
        tls: bool | None = None,
        tls_domain: str | None = None,
        timeout: float | None | _Default = _DEFAULT,
        options: Iterable[tuple[str, object]] = (),
    ):
        addr = self._DEFAULT_ADDR if addr is None else addr
        #: The server address, as given (or the class's default).
        self.addr = addr
        target = addr
        for scheme, scheme_tls in (("https://", True), ("http://", False)):
            if addr.startswith(scheme):
                target = addr[len(scheme) :]
                tls = scheme_tls if tls is None else tls
        if (client_cert is None) != (client_key is None):
            raise ValueError("client_cert and client_key go together (mutual TLS)")
        if tls is None:
            tls = ca_cert is not None or client_cert is not None
        options = list(options)
        if tls:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_pem(ca_cert),
                private_key=_pem(client_key),
                certificate_chain=_pem(client_cert),
            )
            if tls_domain:
                options.append(("grpc.ssl_target_name_override", tls_domain))
            self._channel = grpc.secure_channel(target, credentials, options)
        elif ca_cert is not None or client_cert is not None or tls_domain:
            raise ValueError(f"certificates given for a plaintext connection to {addr!r}")
        else:
            self._channel = grpc.insecure_channel(target, options)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout = self._DEFAULT_TIMEOUT if isinstance(timeout, _Default) else timeout
        self._stub = self._STUB(self._channel)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, rpc, request, timeout: float | None):
        try:
            return rpc(
                request,
                timeout=self.timeout if timeout is None else timeout,
                metadata=self._metadata,
            )
        except grpc.RpcError as e:
            raise errors.from_rpc_error(e) from e


class Client(_Connection):
    """A palr client; use it as a context manager, or close() it.

    addr: "HOST:PORT", "http://HOST:PORT" (plaintext) or "https://HOST:PORT" (TLS), or any
    gRPC target (e.g. "dns:///palr-headless.NAMESPACE.svc.cluster.local:50051").
    token: sent as `authorization: Bearer TOKEN` on every call (the server's [server.auth]).
    ca_cert: the CA that signed the server's certificate (PEM bytes or a path); implies TLS.
    client_cert, client_key: this client's certificate and key, for mutual TLS.
    tls: force TLS on (with the system's roots when no ca_cert) or off; None = decided by the
    scheme and the certificates given. tls_domain: the name to check the server's certificate
    against, when it is not the host in addr.
    timeout: default deadline of each call in seconds (default 30); None = no deadline.
    options: extra gRPC channel options.
    """

    _DEFAULT_ADDR = DEFAULT_ADDR
    _DEFAULT_TIMEOUT = 30.0
    _STUB = pb_grpc.RecommenderStub


    def __enter__(self) -> Client:
        return self

    def recommend(
        self,
        history: Iterable[str | int],
        k: int | None = None,
        *,
        retriever: str | None = None,
        mode: str | None = None,
        num_candidates: int | None = None,
        adapter: str | None = None,
        exclude: Iterable[str | int] = (),
        user_id: str | None = None,
        history_timestamps: Iterable[int] = (),
        timeout: float | None = None,
    ) -> Recommendation:
        """The k best items for a user with this history: a retriever's candidates ranked by
        the LLM. mode: "score", "generate" or "retriever" (no LLM); None = server default."""
        request = pb.RecommendRequest(
            history=_ids(history, "history"),
            k=k or 0,
            retriever=retriever or "",
            num_candidates=num_candidates or 0,
            adapter=adapter or "",
            rank_mode=mode_value(mode),
            exclude=_ids(exclude, "exclude"),
            user_id=user_id or "",
            history_timestamps=list(history_timestamps),
        )
        return Recommendation.from_proto(self._call(self._stub.Recommend, request, timeout))

    def rank(
        self,
        history: Iterable[str | int],
        candidates: Iterable[str | int],
        k: int | None = None,
        *,
        mode: str | None = None,
        adapter: str | None = None,
        user_id: str | None = None,
        timeout: float | None = None,
    ) -> Recommendation:
        """The caller's candidates (best first in the caller's order) ranked by the LLM."""
        request = pb.RankRequest(
            history=_ids(history, "history"),
            candidates=_ids(candidates, "candidates"),
            k=k or 0,
            adapter=adapter or "",
            rank_mode=mode_value(mode),
            user_id=user_id or "",
        )
        return Recommendation.from_proto(self._call(self._stub.Rank, request, timeout))

    def retrieve(
        self,
        history: Iterable[str | int],
        num_candidates: int | None = None,
        *,
        retriever: str | None = None,
        exclude: Iterable[str | int] = (),
        user_id: str | None = None,
        history_timestamps: Iterable[int] = (),
        timeout: float | None = None,
    ) -> Retrieval:
        """A retriever's candidates and scores alone, no LLM."""
        request = pb.RetrieveRequest(
            history=_ids(history, "history"),
            num_candidates=num_candidates or 0,
            retriever=retriever or "",
            exclude=_ids(exclude, "exclude"),
            user_id=user_id or "",
            history_timestamps=list(history_timestamps),
        )
        return Retrieval.from_proto(self._call(self._stub.Retrieve, request, timeout))

    def list_retrievers(self, *, timeout: float | None = None) -> list[RetrieverInfo]:
        """The loaded retriever plugins and fusions."""
        answer = self._call(self._stub.ListRetrievers, pb.ListRetrieversRequest(), timeout)
        return [RetrieverInfo.from_proto(r) for r in answer.retrievers]

    def model_info(self, *, timeout: float | None = None) -> ModelInfo:
        """The model, its adapters, and the server's limits and defaults."""
        return ModelInfo.from_proto(
            self._call(self._stub.GetModelInfo, pb.GetModelInfoRequest(), timeout)
        )
