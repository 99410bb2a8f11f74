"""What palr answers, as frozen dataclasses (the proto's messages, field for field by name).

Rank modes are strings: "score", "generate", "retriever" ("" in an answer = unspecified).
The admin API's answers (admin.proto) follow RetrieverInfo and ModelInfo.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from ._proto import admin_pb2 as admin_pb
from ._proto import recommender_pb2 as pb

MODES = {
    "score": pb.RANK_MODE_SCORE,
    "generate": pb.RANK_MODE_GENERATE,
    "retriever": pb.RANK_MODE_RETRIEVER,
}
_MODE_NAMES = {value: name for name, value in MODES.items()}


def mode_value(mode: str | None) -> int:
    """The RankMode of a mode name; None = the server's default."""
    if mode is None:
        return pb.RANK_MODE_UNSPECIFIED
    try:
        return MODES[mode]
    except KeyError:
        raise ValueError(f"unknown mode {mode!r}; use one of {sorted(MODES)} or None") from None


def mode_name(value: int) -> str:
    return _MODE_NAMES.get(value, "")


def _from_message(cls, msg, **converted):
    """cls from msg's fields of the same names; repeated fields become tuples."""
    values = {}
    for f in fields(cls):
        if f.name in converted:
            values[f.name] = converted[f.name]
            continue
        value = getattr(msg, f.name)
        values[f.name] = (
            tuple(value) if msg.DESCRIPTOR.fields_by_name[f.name].is_repeated else value
        )
    return cls(**values)


@dataclass(frozen=True)
class Timings:
    """Where a request's time went (milliseconds) and its prompt's size."""

    retrieve_ms: float
    queue_ms: float
    prompt_ms: float
    prefill_ms: float
    decode_ms: float
    first_token_ms: float
    total_ms: float
    prompt_tokens: int
    generated_tokens: int
    cached_prompt_tokens: int

    @classmethod
    def from_proto(cls, msg: pb.StageTimings) -> Timings:
        return _from_message(cls, msg)


@dataclass(frozen=True)
class Item:
    """One recommended item; higher scores are better."""

    item_id: str
    title: str
    score: float
    # 1-based position in the retriever's (or caller's) candidate list.
    retriever_rank: int
    # False for the tail the LLM did not place (retriever order).
    ranked_by_llm: bool

    @classmethod
    def from_proto(cls, msg: pb.RankedItem) -> Item:
        return _from_message(cls, msg)


@dataclass(frozen=True)
class Recommendation:
    """The answer of Recommend and Rank."""

    items: tuple[Item, ...]
    timings: Timings
    retriever: str
    mode: str
    adapter: str

    @property
    def item_ids(self) -> list[str]:
        return [item.item_id for item in self.items]

    @classmethod
    def from_proto(cls, msg: pb.RecommendResponse) -> Recommendation:
        return cls(
            items=tuple(Item.from_proto(i) for i in msg.items),
            timings=Timings.from_proto(msg.timings),
            retriever=msg.retriever,
            mode=mode_name(msg.rank_mode),
            adapter=msg.adapter,
        )


@dataclass(frozen=True)
class ScoredItem:
    item_id: str
    title: str
    score: float

    @classmethod
    def from_proto(cls, msg: pb.ScoredItem) -> ScoredItem:
        return _from_message(cls, msg)


@dataclass(frozen=True)
class Retrieval:
    """The answer of Retrieve: a retriever's candidates, best first, no LLM."""

    items: tuple[ScoredItem, ...]
    retriever: str
    timings: Timings

    @property
    def item_ids(self) -> list[str]:
        return [item.item_id for item in self.items]

    @classmethod
    def from_proto(cls, msg: pb.RetrieveResponse) -> Retrieval:
        return cls(
            items=tuple(ScoredItem.from_proto(i) for i in msg.items),
            retriever=msg.retriever,
            timings=Timings.from_proto(msg.timings),
        )


@dataclass(frozen=True)
class RetrieverInfo:
    """A loaded retriever plugin or fusion (see RetrieverInfo in recommender.proto)."""

    name: str
    plugin_name: str
    plugin_version: str
    description: str
    is_default: bool
    library_path: str
    abi_version: int
    calls: int
    failures: int
    view_stage: str
    trained_on_stage: str
    trained_on_fingerprint: str
    stale_snapshot: bool
    note: str
    fusion_members: tuple[str, ...]
    fusion_method: str
    fusion_weights: tuple[float, ...]
    max_concurrent_calls: int
    running_calls: int
    # "closed", "open" (quarantined) or "half-open".
    breaker_state: str
    timeouts: int
    refused: int

    @classmethod
    def from_proto(cls, msg: pb.RetrieverInfo) -> RetrieverInfo:
        return _from_message(cls, msg)


@dataclass(frozen=True)
class ModelInfo:
    """The loaded model, its adapters, and the server's limits and defaults."""

    model_name: str
    architecture: str
    backend: str
    dtype: str
    num_layers: int
    hidden_size: int
    vocab_size: int
    max_context: int
    adapters: tuple[str, ...]
    default_adapter: str
    default_mode: str
    default_retriever: str
    default_k: int
    max_k: int
    default_num_candidates: int
    max_num_candidates: int
    max_score_candidates: int
    max_retrieve_candidates: int
    max_history: int
    history_items_used: int
    prompt_history_items: int
    max_prompt_tokens: int
    max_exclude: int
    catalog_items: int
    training_view_stage: str
    training_view_fingerprint: str

    @classmethod
    def from_proto(cls, msg: pb.ModelInfo) -> ModelInfo:
        return _from_message(cls, msg, default_mode=mode_name(msg.default_rank_mode))


# The admin API (admin.proto; AdminClient).


@dataclass(frozen=True)
class LoadedRetriever:
    """A retriever plugin as a reload (ReloadRetrievers, ReloadData) loaded it."""

    name: str
    # The library's file name (not its directory).
    library_file: str
    plugin_name: str
    plugin_version: str
    # Unique per load, increasing: every reload gets new ones.
    generation: int
    # The library file had changed on disk since first loaded: a copy of it was loaded.
    loaded_from_copy: bool
    # Pre-trained state fitted on an older snapshot of the data than its view: retrain it.
    stale_snapshot: bool
    note: str

    @classmethod
    def from_proto(cls, msg: admin_pb.LoadedRetriever) -> LoadedRetriever:
        return _from_message(cls, msg)


@dataclass(frozen=True)
class RetrieversReload:
    """The answer of ReloadRetrievers (ReloadRetrieversResponse): what serves now."""

    retrievers: tuple[LoadedRetriever, ...]
    fusions: tuple[str, ...]
    default_retriever: str
    # Names (retrievers and fusions) new, and no longer served.
    added: tuple[str, ...]
    removed: tuple[str, ...]
    # Sections of the configuration changed but not reloaded (they need a restart).
    not_reloaded: tuple[str, ...]
    took_ms: float

    @classmethod
    def from_proto(cls, msg: admin_pb.ReloadRetrieversResponse) -> RetrieversReload:
        retrievers = tuple(LoadedRetriever.from_proto(r) for r in msg.retrievers)
        return _from_message(cls, msg, retrievers=retrievers)


@dataclass(frozen=True)
class DataCounts:
    """The size of a data set as loaded."""

    items: int
    users: int
    interactions: int
    # Interaction rows dropped because their item is not in the catalog (skip_unknown_items).
    skipped_unknown_items: int

    @classmethod
    def from_proto(cls, msg: admin_pb.DataCounts) -> DataCounts:
        return _from_message(cls, msg)


@dataclass(frozen=True)
class DataReload:
    """The answer of ReloadData (ReloadDataResponse): the data served before and now."""

    before: DataCounts
    after: DataCounts
    items_added: int
    items_removed: int
    # The retrievers' training view now (as model_info() reports it), and the fingerprint of
    # the one it replaced (equal when the data did not change).
    training_view_stage: str
    training_view_fingerprint: str
    previous_training_view_fingerprint: str
    # Every retriever plugin, created (fitted) anew on the new view.
    retrievers: tuple[LoadedRetriever, ...]
    took_ms: float

    @classmethod
    def from_proto(cls, msg: admin_pb.ReloadDataResponse) -> DataReload:
        return _from_message(
            cls,
            msg,
            before=DataCounts.from_proto(msg.before),
            after=DataCounts.from_proto(msg.after),
            retrievers=tuple(LoadedRetriever.from_proto(r) for r in msg.retrievers),
        )


@dataclass(frozen=True)
class Adapter:
    """A LoRA adapter requests may name (`adapter=`)."""

    name: str
    # Folded into the weights at load (every request uses it); False: picked per request.
    merged: bool
    # `[model] default_adapter`, used when a request names none.
    is_default: bool
    # The directory it was loaded from, as the server resolved it.
    dir: str
    # Unique per load in the server's life, increasing (a replaced adapter gets a new one);
    # 0 for a merged adapter.
    generation: int
    # Largest LoRA rank, projections adapted, parameters of their A and B matrices (0 merged).
    rank: int
    projections: int
    parameters: int
    # When it was loaded, Unix time in milliseconds (0 for a merged adapter).
    loaded_unix_ms: int

    @classmethod
    def from_proto(cls, msg: admin_pb.Adapter) -> Adapter:
        return _from_message(cls, msg)


@dataclass(frozen=True)
class AdapterList:
    """The answer of ListAdapters (ListAdaptersResponse)."""

    adapters: tuple[Adapter, ...]
    # `[model] default_adapter` ("": the model as loaded).
    default_adapter: str

    @property
    def names(self) -> list[str]:
        return [adapter.name for adapter in self.adapters]

    @classmethod
    def from_proto(cls, msg: admin_pb.ListAdaptersResponse) -> AdapterList:
        adapters = tuple(Adapter.from_proto(a) for a in msg.adapters)
        return _from_message(cls, msg, adapters=adapters)


@dataclass(frozen=True)
class AdapterLoad:
    """The answer of LoadAdapter (LoadAdapterResponse)."""

    # The adapter now loaded under the name.
    adapter: Adapter
    # The adapter it replaced (replace=True and one was loaded under the name), else None.
    replaced: Adapter | None
    # Reading, checking and uploading the weights, milliseconds.
    took_ms: float

    @classmethod
    def from_proto(cls, msg: admin_pb.LoadAdapterResponse) -> AdapterLoad:
        replaced = Adapter.from_proto(msg.replaced) if msg.HasField("replaced") else None
        return cls(adapter=Adapter.from_proto(msg.adapter), replaced=replaced, took_ms=msg.took_ms)


@dataclass(frozen=True)
class AdapterUnload:
    """The answer of UnloadAdapter (UnloadAdapterResponse)."""

    # The adapter unloaded.
    adapter: Adapter

    @classmethod
    def from_proto(cls, msg: admin_pb.UnloadAdapterResponse) -> AdapterUnload:
        return cls(adapter=Adapter.from_proto(msg.adapter))
