"""What palr answers, as frozen dataclasses (the proto's messages, field for field by name).

Rank modes are strings: "score", "generate", "retriever" ("" in an answer = unspecified).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

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
