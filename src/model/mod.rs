//! What a model is on disk: the resolved configuration and the checkpoint's tensors.
//! Knows nothing of backends or of serving.

pub mod config;
pub mod lora;
pub mod weights;

use std::path::PathBuf;

pub use config::{GenerationConfig, LlamaConfig, RopeScaling};
pub use weights::{Checkpoint, DType, TensorRef};

/// Errors reading a model directory.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config: {0}")]
    Config(String),
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error("checkpoint {dir}: missing tensor {name:?}")]
    MissingTensor { name: String, dir: PathBuf },
    #[error("adapter {0}")]
    Adapter(String),
    #[error("tensor {name:?} has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
