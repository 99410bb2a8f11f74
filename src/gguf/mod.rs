//! GGUF model files: a bounds-checked reader, dequantization to `f32`, and the import of a
//! llama-architecture GGUF into a Hugging Face model directory that the engine loads.
//!
//! Format: GGUF as specified in ggml's `docs/gguf.md` (versions 2 and 3, little-endian). The
//! block layouts of the quantized tensor types follow ggml's `ggml-common.h`; the tensor and
//! metadata names follow llama.cpp's `convert_hf_to_gguf.py` conventions, whose Q/K row
//! permutation [`import`] undoes.
//!
//! Everything read from a file is untrusted: every offset and size is checked against the file
//! length, and every count is checked against the bytes that remain *before* anything is
//! allocated for it, so a truncated or corrupt file yields a [`GgufError`] naming the problem.
//!
//! Code map:
//! - [`value`]: metadata value types ([`Value`], [`ValueType`]).
//! - [`types`]: ggml tensor types ([`GgmlType`]), their block sizes and the dequantizers.
//! - [`reader`]: parsing a file ([`GgufFile`]), memory-mapped.
//! - [`writer`]: a small GGUF writer (test fixtures, tools).
//! - [`hf_tokenizer`]: a Hugging Face `tokenizer.json` from `tokenizer.ggml.*` metadata.
//! - [`import`]: GGUF -> HF directory (`config.json`, `model.safetensors`, tokenizer files).
//! - [`fetch`]: download, verify and import the default model (SmolLM2-135M-Instruct).

pub mod fetch;
pub mod hf_tokenizer;
pub mod import;
pub mod reader;
pub mod types;
pub mod value;
pub mod writer;

pub use fetch::{DEFAULT_MODEL_NAME, default_model_dir, require_default_model_dir};
pub use reader::{GgufFile, TensorInfo};
pub use types::GgmlType;
pub use value::{Value, ValueType};

/// Errors reading or interpreting a GGUF file. Each names what is wrong and where.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot read GGUF file {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "not a GGUF file: magic bytes are {found:?}, expected \"GGUF\" (is this a safetensors, \
         GGML or GGJT file, or a download error page?)"
    )]
    BadMagic { found: [u8; 4] },
    #[error("unsupported GGUF version {version}: {hint}")]
    UnsupportedVersion { version: u32, hint: &'static str },
    #[error(
        "GGUF file is truncated or corrupt: {what} needs {need} bytes at offset {offset}, but the \
         file is {file_len} bytes long"
    )]
    Truncated {
        what: String,
        offset: u64,
        need: u64,
        file_len: u64,
    },
    #[error(
        "GGUF file is corrupt: {what} claims {count} entries, which cannot fit in the {remaining} \
         bytes left in the file (each entry needs at least {min_entry_size} bytes)"
    )]
    CountTooLarge {
        what: String,
        count: u64,
        remaining: u64,
        min_entry_size: u64,
    },
    #[error("GGUF file is corrupt: {what} is not valid UTF-8 ({source})")]
    InvalidUtf8 {
        what: String,
        #[source]
        source: std::str::Utf8Error,
    },
    #[error("GGUF file is corrupt: {what} has unknown metadata value type {code} (known: 0..=12)")]
    UnknownValueType { what: String, code: u32 },
    #[error("GGUF file is corrupt: {what} is a bool stored as byte {byte}, expected 0 or 1")]
    InvalidBool { what: String, byte: u8 },
    #[error("GGUF file is corrupt: {what} nests arrays deeper than {max} levels")]
    NestingTooDeep { what: String, max: usize },
    #[error("GGUF file is corrupt: metadata key {key:?} appears twice")]
    DuplicateKey { key: String },
    #[error("GGUF file is corrupt: tensor {name:?} appears twice")]
    DuplicateTensor { name: String },
    #[error("GGUF file is corrupt: general.alignment is {0}, expected a power of two (default 32)")]
    BadAlignment(u64),
    #[error(
        "GGUF file is corrupt: tensor {name:?} has unknown ggml type {code}; the file may come \
         from a newer llama.cpp than this reader knows"
    )]
    UnknownTensorType { name: String, code: u32 },
    #[error("GGUF file is corrupt: tensor {name:?}: {reason}")]
    BadTensor { name: String, reason: String },
    #[error(
        "tensor {name:?} has type {ty}, which palr cannot dequantize (supported: F32, F16, BF16, \
         Q8_0, Q4_0, Q4_1); re-quantize the model to one of these, e.g. with llama.cpp's \
         llama-quantize"
    )]
    UnsupportedTensorType { name: String, ty: GgmlType },
    #[error("GGUF metadata is invalid: {0}")]
    BadMetadata(String),
    #[error("metadata key {key:?} is missing")]
    MissingKey { key: String },
    #[error("metadata key {key:?} has type {found}, expected {expected}")]
    WrongKeyType {
        key: String,
        expected: &'static str,
        found: String,
    },
}

/// Result of GGUF reading.
pub type Result<T, E = GgufError> = std::result::Result<T, E>;
