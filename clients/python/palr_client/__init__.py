"""palr-client: a typed Python client for palr's gRPC API (proto/palr/v1/recommender.proto)
and its admin API (proto/palr/admin/v1/admin.proto).

    from palr_client import AdminClient, Client

    with Client("127.0.0.1:50051", token=None) as palr:
        answer = palr.recommend(["1", "50", "172"], k=5)
        for item in answer.items:
            print(item.item_id, item.title, item.score)

    with AdminClient("127.0.0.1:50052", token=ADMIN_TOKEN) as admin:
        admin.load_adapter("ml100k", "adapters/ml100k-v2", replace=True)

The gRPC stubs (palr_client._proto) are generated from the protos when the package is built.
"""

from .admin import AdminClient
from .client import Client
from .errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PalrError,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from .types import (
    Adapter,
    AdapterList,
    AdapterLoad,
    AdapterUnload,
    DataCounts,
    DataReload,
    Item,
    LoadedRetriever,
    ModelInfo,
    Recommendation,
    Retrieval,
    RetrieverInfo,
    RetrieversReload,
    ScoredItem,
    Timings,
)

__all__ = [
    "Adapter",
    "AdapterList",
    "AdapterLoad",
    "AdapterUnload",
    "AdminClient",
    "AlreadyExists",
    "Client",
    "DataCounts",
    "DataReload",
    "DeadlineExceeded",
    "FailedPrecondition",
    "InvalidArgument",
    "Item",
    "LoadedRetriever",
    "ModelInfo",
    "NotFound",
    "PalrError",
    "PermissionDenied",
    "Recommendation",
    "ResourceExhausted",
    "Retrieval",
    "RetrieverInfo",
    "RetrieversReload",
    "ScoredItem",
    "Timings",
    "Unauthenticated",
    "Unavailable",
]
