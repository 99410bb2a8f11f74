"""AdminClient: palr's admin API (proto/palr/admin/v1/admin.proto, palr.admin.v1.Admin).

The admin API changes what a running server serves without a restart: it reloads the retrievers
or the data, and loads, replaces and unloads LoRA adapters. It listens on the server's own
`[server] admin_addr` (default 127.0.0.1:50052) and only when some token has the `admin` scope;
every call needs such a token (Unauthenticated without one the server accepts, PermissionDenied
with one lacking the scope). Admin calls run one at a time on the server. Failures raise
PalrError (admin.proto lists the codes of each call).
"""

from __future__ import annotations

from os import PathLike, fspath

from ._proto import admin_pb2 as admin_pb
from ._proto import admin_pb2_grpc as admin_pb_grpc
from .client import _Connection
from .types import AdapterList, AdapterLoad, AdapterUnload, DataReload, RetrieversReload

DEFAULT_ADMIN_ADDR = "127.0.0.1:50052"


class AdminClient(_Connection):
    """A client of palr's admin API; use it as a context manager, or close() it.

    The arguments are Client's: addr (here the server's admin_addr), token (one with the
    `admin` scope), ca_cert, client_cert, client_key, tls, tls_domain (the admin listener uses
    the server's TLS), options. timeout: default deadline of each call in seconds (default 120; None = no
    deadline): longer than Client's, as the reloads create (fit) every retriever anew.
    """

    _DEFAULT_ADDR = DEFAULT_ADMIN_ADDR
    _DEFAULT_TIMEOUT = 120.0
    _STUB = admin_pb_grpc.AdminStub

    def __enter__(self) -> AdminClient:
        return self

    def reload_retrievers(self, *, timeout: float | None = None) -> RetrieversReload:
        """Reads the server's configuration again and swaps in its `[retrieval]` section, every
        plugin re-opened and every retriever created anew (SIGHUP does the same). If anything
        fails: FailedPrecondition saying what, and the running retrievers stay."""
        request = admin_pb.ReloadRetrieversRequest()
        return RetrieversReload.from_proto(
            self._call(self._stub.ReloadRetrievers, request, timeout)
        )

    def reload_data(self, *, timeout: float | None = None) -> DataReload:
        """Reads the server's data directory again and swaps in catalog, training view,
        retrievers (fitted on it) and ranker as one unit. If anything fails:
        FailedPrecondition naming the file or retriever, and nothing changes."""
        request = admin_pb.ReloadDataRequest()
        return DataReload.from_proto(self._call(self._stub.ReloadData, request, timeout))

    def list_adapters(self, *, timeout: float | None = None) -> AdapterList:
        """The LoRA adapters requests may name: `[model] adapters` and those loaded since."""
        request = admin_pb.ListAdaptersRequest()
        return AdapterList.from_proto(self._call(self._stub.ListAdapters, request, timeout))

    def load_adapter(
        self,
        name: str,
        dir: str | PathLike,
        *,
        replace: bool = False,
        timeout: float | None = None,
    ) -> AdapterLoad:
        """Loads the PEFT LoRA directory `dir` (adapter_config.json,
        adapter_model.safetensors) as the unmerged adapter `name` that requests may name from
        then on. `dir` is a path on the server, inside one of its `[model] adapter_dirs`
        (relative: to the server's working directory). With replace=True an adapter loaded
        under `name` is swapped for the new one (requests already running or queued keep the
        old one); without, a name taken is AlreadyExists. A bad name, a directory outside
        adapter_dirs or an adapter that does not fit the model is InvalidArgument;
        `[model] max_adapters` reached is ResourceExhausted; the merged adapter's name is
        FailedPrecondition. A refusal changes nothing."""
        request = admin_pb.LoadAdapterRequest(name=name, dir=fspath(dir), replace=replace)
        return AdapterLoad.from_proto(self._call(self._stub.LoadAdapter, request, timeout))

    def unload_adapter(self, name: str, *, timeout: float | None = None) -> AdapterUnload:
        """Unloads the unmerged adapter `name`: later requests naming it are NotFound, requests
        holding it finish on it. NotFound: no such adapter; FailedPrecondition: the merged
        adapter or `[model] default_adapter`."""
        request = admin_pb.UnloadAdapterRequest(name=name)
        return AdapterUnload.from_proto(self._call(self._stub.UnloadAdapter, request, timeout))
