"""palr-client: a typed Python client for palr's gRPC API (proto/palr/v1/recommender.proto).

    from palr_client import Client

    with Client("127.0.0.1:50051", token=None) as palr:
        answer = palr.recommend(["1", "50", "172"], k=5)
        for item in answer.items:
            print(item.item_id, item.title, item.score)

The gRPC stubs (palr_client._proto) are generated from the proto when the package is built.
"""

from .client import Client
from .errors import (
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    PalrError,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from .types import Item, ModelInfo, Recommendation, Retrieval, RetrieverInfo, ScoredItem, Timings

__all__ = [
    "Client",
    "DeadlineExceeded",
    "InvalidArgument",
    "Item",
    "ModelInfo",
    "NotFound",
    "PalrError",
    "PermissionDenied",
    "Recommendation",
    "ResourceExhausted",
    "Retrieval",
    "RetrieverInfo",
    "ScoredItem",
    "Timings",
    "Unauthenticated",
    "Unavailable",
]
