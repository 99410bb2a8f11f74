//! The service's errors and their one mapping to gRPC status codes.
//!
//! Each layer keeps its own error type; this module holds the only functions that turn them
//! into [`tonic::Status`] ([`retrieval_status`], [`rank_status`], and `From<ServiceError>`),
//! in the style of qdrant's storage-error-to-status mapping, so the codes are decided in one
//! place. Messages go to the caller unchanged: every layer's messages already say what is
//! wrong and what to change.

use tonic::{Code, Status};

use crate::rank::RankError;
use crate::retrieval::{ErrorCode, PluginFailure, RetrievalError};

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The request cannot be served as sent (INVALID_ARGUMENT).
    #[error("{0}")]
    InvalidArgument(String),
    /// It names something this server does not have (NOT_FOUND).
    #[error("{0}")]
    NotFound(String),
    /// The ranker's wait queue is full (RESOURCE_EXHAUSTED).
    #[error(
        "server busy, retry later: {waiting} requests already wait for the ranker (server.max_queue)"
    )]
    Busy { waiting: usize },
    /// The caller's deadline passed (DEADLINE_EXCEEDED); `0` is the stage it passed in.
    #[error("deadline exceeded during {0}")]
    DeadlineExceeded(&'static str),
    /// The request could not finish by its deadline, so it was not started
    /// (DEADLINE_EXCEEDED).
    #[error(
        "refused at admission: the ranker would answer in about {expected_ms} ms (queue and \
         ranking, as measured) but the deadline leaves {left_ms} ms; retry with a longer \
         deadline or later"
    )]
    TooLate { expected_ms: u64, left_ms: u64 },
    /// No ranking slot freed within `server.max_queue_wait_ms` (RESOURCE_EXHAUSTED).
    #[error(
        "server busy, retry later: waited {waited_ms} ms for the ranker (server.max_queue_wait_ms)"
    )]
    WaitedTooLong { waited_ms: u64 },
    /// A retriever failed (code by [`retrieval_status`]).
    #[error(transparent)]
    Retrieval(#[from] RetrievalError),
    /// The ranker failed (code by [`rank_status`]).
    #[error(transparent)]
    Rank(#[from] RankError),
    /// A retriever did not answer within `retrieval.timeout_ms` (UNAVAILABLE: a slow
    /// plugin may answer in time on a retry; a hung one is also counted in the metrics).
    #[error(
        "retriever \"{name}\" did not answer within {ms} ms (retrieval.timeout_ms); its call was abandoned"
    )]
    RetrieverTimeout { name: String, ms: u64 },
    /// Every one of a retriever's concurrent-call slots is taken (UNAVAILABLE): it is slow or
    /// hung; other retrievers are unaffected.
    #[error(
        "retriever \"{name}\" is at its limit of {limit} concurrent calls \
         (retrieval.max_concurrent_calls): it is slow or hung; retry later or use another retriever"
    )]
    RetrieverBusy { name: String, limit: usize },
    /// A retriever is quarantined after repeated timeouts (UNAVAILABLE).
    #[error(
        "retriever \"{name}\" is quarantined after repeated timeouts (retrieval.breaker_timeouts); \
         it is tried again in {retry_in_ms} ms; use another retriever meanwhile"
    )]
    RetrieverQuarantined { name: String, retry_in_ms: u64 },
    /// A fusion's member failed (the member's code).
    #[error("fusion \"{fusion}\": member \"{member}\": {source}")]
    FusionMember {
        fusion: String,
        member: String,
        source: Box<ServiceError>,
    },
    /// What the server is asked to do cannot be done in its present state or with its
    /// configuration as it stands (FAILED_PRECONDITION): an admin reload of a bad
    /// configuration, which leaves what runs untouched.
    #[error("{0}")]
    FailedPrecondition(String),
    /// It would create what exists already (ALREADY_EXISTS): an adapter name in use.
    #[error("{0}")]
    AlreadyExists(String),
    /// A bound of the server's configuration is reached (RESOURCE_EXHAUSTED), e.g.
    /// `model.max_adapters`.
    #[error("{0}")]
    ResourceExhausted(String),
    /// A server fault (INTERNAL).
    #[error("internal error: {0}")]
    Internal(String),
}

/// Result alias of the service.
pub type Result<T, E = ServiceError> = std::result::Result<T, E>;

/// The status code of a retrieval error. A plugin's own error is INTERNAL, like a panic or a
/// contract violation: nothing says it is transient, so UNAVAILABLE (which invites blind
/// retries) would mislead.
pub fn retrieval_code(e: &RetrievalError) -> Code {
    match e.code() {
        ErrorCode::NotFound => Code::NotFound,
        ErrorCode::InvalidArgument => Code::InvalidArgument,
        ErrorCode::FailedPrecondition => Code::FailedPrecondition,
        ErrorCode::Unavailable | ErrorCode::Internal => Code::Internal,
    }
}

/// A retrieval error as a status.
pub fn retrieval_status(e: &RetrievalError) -> Status {
    Status::new(retrieval_code(e), e.to_string())
}

/// The status code of a ranking error.
pub fn rank_code(e: &RankError) -> Code {
    use crate::engine::EngineError;
    match e {
        RankError::Invalid(_) => Code::InvalidArgument,
        RankError::DeadlineExceeded(_) => Code::DeadlineExceeded,
        RankError::Cancelled(_) => Code::Cancelled,
        RankError::Engine(EngineError::OutOfMemory(_)) => Code::ResourceExhausted,
        RankError::Config(_) | RankError::Engine(_) | RankError::Tokenizer(_) => Code::Internal,
    }
}

/// A ranking error as a status.
pub fn rank_status(e: &RankError) -> Status {
    Status::new(rank_code(e), e.to_string())
}

impl ServiceError {
    /// The status code this error maps to.
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::NotFound(_) => Code::NotFound,
            Self::Busy { .. } => Code::ResourceExhausted,
            Self::DeadlineExceeded(_) | Self::TooLate { .. } => Code::DeadlineExceeded,
            Self::WaitedTooLong { .. } => Code::ResourceExhausted,
            Self::Retrieval(e) => retrieval_code(e),
            Self::Rank(e) => rank_code(e),
            Self::RetrieverTimeout { .. }
            | Self::RetrieverBusy { .. }
            | Self::RetrieverQuarantined { .. } => Code::Unavailable,
            Self::FusionMember { source, .. } => source.code(),
            Self::FailedPrecondition(_) => Code::FailedPrecondition,
            Self::AlreadyExists(_) => Code::AlreadyExists,
            Self::ResourceExhausted(_) => Code::ResourceExhausted,
            Self::Internal(_) => Code::Internal,
        }
    }

    /// The plugin failure kind for the `palr_plugin_errors_total` metric, if this is one.
    pub fn plugin_failure(&self) -> Option<(&str, &'static str)> {
        match self {
            Self::Retrieval(RetrievalError::Retrieve { name, failure, .. }) => Some((
                name,
                match failure {
                    PluginFailure::Error => "error",
                    PluginFailure::Panic => "panic",
                    PluginFailure::RejectedArguments => "rejected_arguments",
                },
            )),
            Self::Retrieval(RetrievalError::Contract { name, .. }) => Some((name, "contract")),
            Self::RetrieverTimeout { name, .. } => Some((name, "timeout")),
            Self::RetrieverBusy { name, .. } => Some((name, "busy")),
            Self::RetrieverQuarantined { name, .. } => Some((name, "quarantined")),
            _ => None,
        }
    }
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Status {
        match &e {
            ServiceError::Retrieval(r) => retrieval_status(r),
            ServiceError::Rank(r) => rank_status(r),
            other => Status::new(other.code(), other.to_string()),
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] super::config::ConfigError),
    #[error("data set {dir}: {source}")]
    Data {
        dir: String,
        source: crate::data::DataError,
    },
    #[error("retrievers: {0}")]
    Retrieval(#[from] RetrievalError),
    #[error("model {dir}: {message} (run `palr model fetch` for the default model)")]
    Model { dir: String, message: String },
    #[error(
        "model.device = \"{device}\": {message} (set model.device = \"cpu\" to run without a GPU)"
    )]
    Device { device: String, message: String },
    #[error("ranker: {0}")]
    Rank(#[from] RankError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("server: {0}")]
    Serve(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        let plugin = |failure| {
            ServiceError::Retrieval(RetrievalError::Retrieve {
                name: "broken".into(),
                failure,
                message: "no model for you".into(),
            })
        };
        let s = Status::from(plugin(PluginFailure::Error));
        assert_eq!(s.code(), Code::Internal);
        assert!(s.message().contains("no model for you") && s.message().contains("broken"));
        assert_eq!(
            plugin(PluginFailure::Panic).plugin_failure(),
            Some(("broken", "panic"))
        );
        let nf = ServiceError::Retrieval(RetrievalError::NotFound {
            name: "x".into(),
            known: vec!["a".into(), "b".into()],
        });
        let s = Status::from(nf);
        assert_eq!(s.code(), Code::NotFound);
        assert!(s.message().contains("[a, b]"), "{}", s.message());
        assert_eq!(
            Status::from(ServiceError::Rank(RankError::Invalid("too long".into()))).code(),
            Code::InvalidArgument
        );
        assert_eq!(
            Status::from(ServiceError::Rank(RankError::DeadlineExceeded("decode"))).code(),
            Code::DeadlineExceeded
        );
        let busy = Status::from(ServiceError::Busy { waiting: 64 });
        assert_eq!(busy.code(), Code::ResourceExhausted);
        assert!(busy.message().starts_with("server busy, retry later"));
        assert_eq!(
            Status::from(ServiceError::DeadlineExceeded("queue")).code(),
            Code::DeadlineExceeded
        );
    }
}
