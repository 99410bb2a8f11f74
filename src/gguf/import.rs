//! Imports a llama-architecture GGUF file into a Hugging Face model directory — the layout
//! `transformers`' `LlamaForCausalLM` reads and palr's engine loads:
//!
//! - `config.json`: hyperparameters from `llama.*` metadata (GGUF naming per llama.cpp's
//!   `convert_hf_to_gguf.py`, HF naming per `transformers`' `LlamaConfig`);
//! - `model.safetensors`: every weight dequantized to `f32` (or rounded to `bf16`), with HF
//!   tensor names and row-major `[out, in]` shapes (GGUF lists dims innermost first);
//! - `tokenizer.json`, `tokenizer_config.json` ([`super::hf_tokenizer`]),
//!   `generation_config.json`, and `palr-import.json` (provenance: source file and sha256).
//!
//! llama.cpp's converter permutes the rows of `attn_q`/`attn_k` so that its RoPE can rotate
//! adjacent pairs: per head it reorders rows `(2, head_dim/2) -> (head_dim/2, 2)`
//! (`permute(w, n_head, n_head_kv)`). [`unpermute_qk_rows`] restores the HF order, in which
//! RoPE rotates row `i` with row `i + head_dim/2`.
//!
//! The directory is written under a temporary name next to the target and renamed into place
//! only when complete, so a failed import leaves nothing behind.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use safetensors::Dtype;
use safetensors::tensor::View;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::GgufError;
use super::hf_tokenizer::{self, GgufTokenizer};
use super::reader::{GgufFile, TensorInfo};

/// Errors importing a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(
        "general.architecture is {0:?}; palr imports llama-architecture models only (LLaMA, \
         SmolLM, Mistral-style dense models)"
    )]
    UnsupportedArchitecture(String),
    #[error("invalid hyperparameter {key}: {reason}")]
    BadHyperparameter { key: String, reason: String },
    #[error("the GGUF file has no tensor {gguf_name:?} (needed for {hf_name})")]
    MissingTensor { gguf_name: String, hf_name: String },
    #[error(
        "the GGUF file has tensor {0:?}, which has no place in a LlamaForCausalLM checkpoint \
         (palr does not import it rather than silently drop it)"
    )]
    UnexpectedTensor(String),
    #[error(
        "tensor {gguf_name:?} has shape {found:?} (row-major), expected {expected:?} from the config"
    )]
    ShapeMismatch {
        gguf_name: String,
        expected: Vec<u64>,
        found: Vec<u64>,
    },
    #[error(
        "output directory {0} already exists and is not empty; remove it or pass --force to \
         replace it"
    )]
    OutputExists(PathBuf),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    SafeTensors {
        path: PathBuf,
        #[source]
        source: safetensors::SafeTensorError,
    },
    #[error("converting tensor {name:?}: {reason}")]
    Conversion { name: String, reason: String },
    #[error("the generated tokenizer.json does not load: {0}")]
    Tokenizer(#[from] crate::tokenizer::TokenizerError),
}

/// Result of importing.
pub type Result<T, E = ImportError> = std::result::Result<T, E>;

/// Storage type of the imported weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutDtype {
    #[default]
    F32,
    Bf16,
}

impl OutDtype {
    fn safetensors(self) -> Dtype {
        match self {
            OutDtype::F32 => Dtype::F32,
            OutDtype::Bf16 => Dtype::BF16,
        }
    }

    fn size(self) -> usize {
        match self {
            OutDtype::F32 => 4,
            OutDtype::Bf16 => 2,
        }
    }

    /// The `torch_dtype` / `dtype` name in `config.json`.
    pub fn torch_name(self) -> &'static str {
        match self {
            OutDtype::F32 => "float32",
            OutDtype::Bf16 => "bfloat16",
        }
    }
}

impl std::str::FromStr for OutDtype {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" | "float32" => Ok(OutDtype::F32),
            "bf16" | "bfloat16" => Ok(OutDtype::Bf16),
            other => Err(format!("unknown dtype {other:?}; expected f32 or bf16")),
        }
    }
}

/// Import options.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    pub dtype: OutDtype,
    /// Replace an existing non-empty output directory.
    pub force: bool,
}

/// What an import produced.
#[derive(Debug, Clone)]
pub struct ImportSummary {
    pub out_dir: PathBuf,
    pub n_tensors: usize,
    pub tie_word_embeddings: bool,
    pub source_sha256: String,
    /// Things the user should know (e.g. an eos id chosen against the metadata).
    pub warnings: Vec<String>,
}

/// Name of the provenance file written into every imported directory.
pub const PROVENANCE_FILE: &str = "palr-import.json";

/// Llama hyperparameters read from GGUF metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaParams {
    pub name: Option<String>,
    pub n_layer: u64,
    pub n_embd: u64,
    pub n_ff: u64,
    pub n_head: u64,
    pub n_head_kv: u64,
    pub head_dim: u64,
    pub n_ctx: u64,
    /// As stored (GGUF keeps it as f32; widened exactly).
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// Linear RoPE scaling factor, if the file asks for it.
    pub rope_linear_factor: Option<f64>,
    pub vocab_size: u64,
}

fn hp(key: &str, reason: impl Into<String>) -> ImportError {
    ImportError::BadHyperparameter {
        key: key.to_string(),
        reason: reason.into(),
    }
}

impl LlamaParams {
    /// Reads and checks the `llama.*` keys.
    pub fn from_gguf(f: &GgufFile) -> Result<Self> {
        let arch = f.require_str("general.architecture")?;
        if arch != "llama" {
            return Err(ImportError::UnsupportedArchitecture(arch.to_string()));
        }
        let k = |s: &str| format!("llama.{s}");
        let positive = |key: String| -> Result<u64> {
            let v = f.require_u64(&key)?;
            if v == 0 {
                return Err(hp(&key, "is 0"));
            }
            Ok(v)
        };
        let n_layer = positive(k("block_count"))?;
        let n_embd = positive(k("embedding_length"))?;
        let n_ff = positive(k("feed_forward_length"))?;
        let n_head = positive(k("attention.head_count"))?;
        let n_head_kv = match f.get_u64(&k("attention.head_count_kv"))? {
            None => n_head,
            Some(0) => return Err(hp(&k("attention.head_count_kv"), "is 0")),
            Some(v) => v,
        };
        if n_head % n_head_kv != 0 {
            return Err(hp(
                &k("attention.head_count_kv"),
                format!("{n_head_kv} does not divide the head count {n_head}"),
            ));
        }
        let head_dim = match f.get_u64(&k("attention.key_length"))? {
            Some(d) => d,
            None if n_embd % n_head == 0 => n_embd / n_head,
            None => {
                return Err(hp(
                    &k("attention.head_count"),
                    format!("{n_head} does not divide the embedding length {n_embd}"),
                ));
            }
        };
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(hp(
                &k("attention.key_length"),
                format!("head dimension {head_dim} must be even and positive for RoPE"),
            ));
        }
        if let Some(v) = f.get_u64(&k("attention.value_length"))?
            && v != head_dim
        {
            return Err(hp(
                &k("attention.value_length"),
                format!(
                    "{v} differs from the key length {head_dim}; LlamaForCausalLM needs them equal"
                ),
            ));
        }
        if let Some(r) = f.get_u64(&k("rope.dimension_count"))?
            && r != head_dim
        {
            return Err(hp(
                &k("rope.dimension_count"),
                format!(
                    "{r} differs from the head dimension {head_dim}; partial rotary embeddings are not llama"
                ),
            ));
        }
        let n_ctx = positive(k("context_length"))?;
        let rms_norm_eps = f.require_f64(&k("attention.layer_norm_rms_epsilon"))?;
        if !(rms_norm_eps > 0.0 && rms_norm_eps < 1.0) {
            return Err(hp(
                &k("attention.layer_norm_rms_epsilon"),
                format!("{rms_norm_eps} is not in (0, 1)"),
            ));
        }
        let rope_theta = f.get_f64(&k("rope.freq_base"))?.unwrap_or(10_000.0);
        if !(rope_theta.is_finite() && rope_theta > 0.0) {
            return Err(hp(
                &k("rope.freq_base"),
                format!("{rope_theta} is not positive"),
            ));
        }
        let rope_linear_factor = match f.get_str(&k("rope.scaling.type"))? {
            None | Some("none") => None,
            Some("linear") => {
                let factor = f.require_f64(&k("rope.scaling.factor"))?;
                if !(factor.is_finite() && factor > 0.0) {
                    return Err(hp(
                        &k("rope.scaling.factor"),
                        format!("{factor} is not positive"),
                    ));
                }
                (factor != 1.0).then_some(factor)
            }
            Some(other) => {
                return Err(hp(
                    &k("rope.scaling.type"),
                    format!("{other:?} RoPE scaling is not supported (only linear)"),
                ));
            }
        };
        let embd = f
            .tensor("token_embd.weight")
            .ok_or_else(|| ImportError::MissingTensor {
                gguf_name: "token_embd.weight".into(),
                hf_name: "model.embed_tokens.weight".into(),
            })?;
        let embd_rows = embd.dims.get(1).copied().unwrap_or(0);
        let vocab_size = f.get_u64(&k("vocab_size"))?.unwrap_or(embd_rows);
        Ok(LlamaParams {
            name: f.get_str("general.name")?.map(str::to_owned),
            n_layer,
            n_embd,
            n_ff,
            n_head,
            n_head_kv,
            head_dim,
            n_ctx,
            rms_norm_eps,
            rope_theta,
            rope_linear_factor,
            vocab_size,
        })
    }
}

/// llama.cpp's Q/K row permutation (HF order -> GGUF order) of a row-major `[n_rows, n_cols]`
/// matrix with `n_head` heads: within each head, row `s * head_dim/2 + i` moves to `2 * i + s`.
pub fn permute_qk_rows<T: Copy>(
    w: &[T],
    n_rows: usize,
    n_cols: usize,
    n_head: usize,
) -> Option<Vec<T>> {
    remap_rows(w, n_rows, n_cols, n_head, |half, s, i| {
        (s * half + i, 2 * i + s)
    })
}

/// The inverse of [`permute_qk_rows`] (GGUF order -> HF order).
pub fn unpermute_qk_rows<T: Copy>(
    w: &[T],
    n_rows: usize,
    n_cols: usize,
    n_head: usize,
) -> Option<Vec<T>> {
    remap_rows(w, n_rows, n_cols, n_head, |half, s, i| {
        (2 * i + s, s * half + i)
    })
}

/// Copies rows within each head: `map(half, s, i) = (src_row, dst_row)` for `s in 0..2`,
/// `i in 0..half`. `None` when the sizes do not split into `n_head` heads of even size.
fn remap_rows<T: Copy>(
    w: &[T],
    n_rows: usize,
    n_cols: usize,
    n_head: usize,
    map: impl Fn(usize, usize, usize) -> (usize, usize),
) -> Option<Vec<T>> {
    if n_head == 0 || !n_rows.is_multiple_of(2 * n_head) || n_rows.checked_mul(n_cols)? != w.len() {
        return None;
    }
    let head_dim = n_rows / n_head;
    let half = head_dim / 2;
    let mut out = w.to_vec();
    for h in 0..n_head {
        let base = h * head_dim;
        for s in 0..2 {
            for i in 0..half {
                let (src, dst) = map(half, s, i);
                let (src, dst) = ((base + src) * n_cols, (base + dst) * n_cols);
                out[dst..dst + n_cols].copy_from_slice(&w[src..src + n_cols]);
            }
        }
    }
    Some(out)
}

/// One output tensor: where it comes from and how it is converted.
struct Planned<'a> {
    hf_name: String,
    info: &'a TensorInfo,
    shape: Vec<usize>,
    /// Undo llama.cpp's Q/K permutation with this many heads.
    unpermute_heads: Option<usize>,
}

/// Maps every GGUF tensor to its HF name, checking shapes against the config and that nothing
/// is missing or left over.
fn plan<'a>(f: &'a GgufFile, p: &LlamaParams) -> Result<(Vec<Planned<'a>>, bool)> {
    let (e, ff, v) = (p.n_embd, p.n_ff, p.vocab_size);
    let q_rows = p.n_head * p.head_dim;
    let kv_rows = p.n_head_kv * p.head_dim;
    // (gguf name, hf name, expected row-major shape, unpermute heads)
    let mut wanted: Vec<(String, String, Vec<u64>, Option<u64>)> = vec![
        (
            "token_embd.weight".into(),
            "model.embed_tokens.weight".into(),
            vec![v, e],
            None,
        ),
        (
            "output_norm.weight".into(),
            "model.norm.weight".into(),
            vec![e],
            None,
        ),
    ];
    let tied = f.tensor("output.weight").is_none();
    if !tied {
        wanted.push((
            "output.weight".into(),
            "lm_head.weight".into(),
            vec![v, e],
            None,
        ));
    }
    for i in 0..p.n_layer {
        let g = |s: &str| format!("blk.{i}.{s}.weight");
        let h = |s: &str| format!("model.layers.{i}.{s}.weight");
        wanted.extend([
            (g("attn_norm"), h("input_layernorm"), vec![e], None),
            (
                g("attn_q"),
                h("self_attn.q_proj"),
                vec![q_rows, e],
                Some(p.n_head),
            ),
            (
                g("attn_k"),
                h("self_attn.k_proj"),
                vec![kv_rows, e],
                Some(p.n_head_kv),
            ),
            (g("attn_v"), h("self_attn.v_proj"), vec![kv_rows, e], None),
            (
                g("attn_output"),
                h("self_attn.o_proj"),
                vec![e, q_rows],
                None,
            ),
            (g("ffn_norm"), h("post_attention_layernorm"), vec![e], None),
            (g("ffn_gate"), h("mlp.gate_proj"), vec![ff, e], None),
            (g("ffn_up"), h("mlp.up_proj"), vec![ff, e], None),
            (g("ffn_down"), h("mlp.down_proj"), vec![e, ff], None),
        ]);
    }
    let mut used = HashSet::new();
    let mut planned = Vec::with_capacity(wanted.len());
    for (gguf_name, hf_name, expected, heads) in wanted {
        let info = f
            .tensor(&gguf_name)
            .ok_or_else(|| ImportError::MissingTensor {
                gguf_name: gguf_name.clone(),
                hf_name: hf_name.clone(),
            })?;
        if info.shape() != expected {
            return Err(ImportError::ShapeMismatch {
                gguf_name,
                expected,
                found: info.shape(),
            });
        }
        if !info.ggml_type.can_dequantize() {
            return Err(GgufError::UnsupportedTensorType {
                name: gguf_name,
                ty: info.ggml_type,
            }
            .into());
        }
        used.insert(gguf_name);
        planned.push(Planned {
            hf_name,
            info,
            shape: expected.iter().map(|&d| d as usize).collect(),
            unpermute_heads: heads.map(|h| h as usize),
        });
    }
    if let Some(extra) = f.tensors().iter().find(|t| !used.contains(&t.name)) {
        return Err(ImportError::UnexpectedTensor(extra.name.clone()));
    }
    Ok((planned, tied))
}

/// A tensor converted lazily when the safetensors writer asks for its bytes, so only one
/// tensor is held in memory at a time. Conversion failures (which the plan already rules out)
/// are recorded in `failure` and fail the import afterwards.
struct LazyTensor<'a> {
    file: &'a GgufFile,
    planned: &'a Planned<'a>,
    dtype: OutDtype,
    failure: &'a RefCell<Option<ImportError>>,
}

impl LazyTensor<'_> {
    fn convert(&self) -> Result<Vec<u8>> {
        let p = self.planned;
        let n = p.info.n_elements() as usize;
        let mut w = vec![0f32; n];
        self.file.dequantize_into(p.info, &mut w)?;
        if let Some(heads) = p.unpermute_heads {
            let (rows, cols) = (p.shape[0], p.shape[1]);
            w = unpermute_qk_rows(&w, rows, cols, heads).ok_or_else(|| {
                ImportError::Conversion {
                    name: p.info.name.clone(),
                    reason: format!("{rows} rows do not split into {heads} heads of even size"),
                }
            })?;
        }
        Ok(match self.dtype {
            OutDtype::F32 => w.iter().flat_map(|x| x.to_le_bytes()).collect(),
            OutDtype::Bf16 => w
                .iter()
                .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
                .collect(),
        })
    }
}

impl View for LazyTensor<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype.safetensors()
    }
    fn shape(&self) -> &[usize] {
        &self.planned.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        match self.convert() {
            Ok(bytes) => bytes.into(),
            Err(e) => {
                self.failure.borrow_mut().get_or_insert(e);
                vec![0u8; self.data_len()].into()
            }
        }
    }
    fn data_len(&self) -> usize {
        self.planned.info.n_elements() as usize * self.dtype.size()
    }
}

/// The `config.json` document of `LlamaForCausalLM`.
pub fn config_json(
    p: &LlamaParams,
    tok: &GgufTokenizer,
    tied: bool,
    dtype: OutDtype,
) -> serde_json::Value {
    let id = |t: &Option<hf_tokenizer::SpecialToken>| t.as_ref().map(|t| t.id);
    let (rope_parameters, rope_scaling) = match p.rope_linear_factor {
        None => (
            json!({"rope_theta": p.rope_theta, "rope_type": "default"}),
            json!(null),
        ),
        Some(factor) => (
            json!({"rope_theta": p.rope_theta, "rope_type": "linear", "factor": factor}),
            json!({"type": "linear", "rope_type": "linear", "factor": factor}),
        ),
    };
    let mut c = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "attention_bias": false,
        "attention_dropout": 0.0,
        "bos_token_id": id(&tok.bos),
        "eos_token_id": id(&tok.eos),
        "pad_token_id": id(&tok.pad),
        "unk_token_id": id(&tok.unk),
        "head_dim": p.head_dim,
        "hidden_act": "silu",
        "hidden_size": p.n_embd,
        "initializer_range": 0.02,
        "intermediate_size": p.n_ff,
        "max_position_embeddings": p.n_ctx,
        "mlp_bias": false,
        "num_attention_heads": p.n_head,
        "num_hidden_layers": p.n_layer,
        "num_key_value_heads": p.n_head_kv,
        "pretraining_tp": 1,
        "rms_norm_eps": p.rms_norm_eps,
        "rope_theta": p.rope_theta,
        "rope_parameters": rope_parameters,
        "rope_scaling": rope_scaling,
        "tie_word_embeddings": tied,
        "dtype": dtype.torch_name(),
        "torch_dtype": dtype.torch_name(),
        "use_cache": true,
        "vocab_size": p.vocab_size,
    });
    if let (Some(name), Some(obj)) = (&p.name, c.as_object_mut()) {
        obj.insert("_name_or_path".into(), json!(name));
    }
    c
}

/// The `generation_config.json` document.
pub fn generation_config_json(tok: &GgufTokenizer) -> serde_json::Value {
    let id = |t: &Option<hf_tokenizer::SpecialToken>| t.as_ref().map(|t| t.id);
    json!({
        "_from_model_config": true,
        "bos_token_id": id(&tok.bos),
        "eos_token_id": id(&tok.eos),
        "pad_token_id": id(&tok.pad),
        "use_cache": true,
    })
}

/// Lower-case hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Removes a partly written directory unless disarmed.
struct TempDirGuard(Option<PathBuf>);

impl Drop for TempDirGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ImportError {
    let path = path.to_path_buf();
    move |source| ImportError::Io { what, path, source }
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let mut s = serde_json::to_string_pretty(v).map_err(|e| ImportError::Conversion {
        name: path.display().to_string(),
        reason: e.to_string(),
    })?;
    s.push('\n');
    std::fs::write(path, s).map_err(io("cannot write", path))
}

/// Imports `gguf_path` into the HF directory `out_dir` (created; see [`ImportOptions::force`]).
pub fn import_gguf(
    gguf_path: &Path,
    out_dir: &Path,
    opts: &ImportOptions,
) -> Result<ImportSummary> {
    let f = GgufFile::open(gguf_path)?;
    let params = LlamaParams::from_gguf(&f)?;
    let tok = hf_tokenizer::from_gguf(&f)?;
    if tok.vocab_size as u64 > params.vocab_size {
        return Err(hp(
            "llama.vocab_size",
            format!(
                "the tokenizer has {} tokens but the embedding only {} rows",
                tok.vocab_size, params.vocab_size
            ),
        ));
    }
    let (planned, tied) = plan(&f, &params)?;

    if out_dir.exists() {
        let non_empty = std::fs::read_dir(out_dir)
            .map_err(io("cannot read", out_dir))?
            .next()
            .is_some();
        if non_empty && !opts.force {
            return Err(ImportError::OutputExists(out_dir.to_path_buf()));
        }
    }
    let parent = match out_dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(io("cannot create", &parent))?;
    let base = out_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let tmp = parent.join(format!(".{base}.partial-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io("cannot remove stale", &tmp))?;
    }
    std::fs::create_dir(&tmp).map_err(io("cannot create", &tmp))?;
    let mut guard = TempDirGuard(Some(tmp.clone()));

    // Weights.
    let failure = RefCell::new(None);
    let views: Vec<(String, LazyTensor<'_>)> = planned
        .iter()
        .map(|p| {
            (
                p.hf_name.clone(),
                LazyTensor {
                    file: &f,
                    planned: p,
                    dtype: opts.dtype,
                    failure: &failure,
                },
            )
        })
        .collect();
    let st_path = tmp.join("model.safetensors");
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(meta), &st_path).map_err(|source| {
        ImportError::SafeTensors {
            path: st_path.clone(),
            source,
        }
    })?;
    if let Some(e) = failure.into_inner() {
        return Err(e);
    }
    // The safetensors writer goes through a private (0600) temporary file; give the weights
    // the same permissions as the other files of the directory.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&st_path, std::fs::Permissions::from_mode(0o644))
            .map_err(io("cannot set permissions of", &st_path))?;
    }

    // Config and tokenizer files.
    write_json(
        &tmp.join("config.json"),
        &config_json(&params, &tok, tied, opts.dtype),
    )?;
    write_json(
        &tmp.join("generation_config.json"),
        &generation_config_json(&tok),
    )?;
    write_json(&tmp.join("tokenizer.json"), &tok.tokenizer_json)?;
    write_json(
        &tmp.join("tokenizer_config.json"),
        &tok.tokenizer_config_json(params.n_ctx),
    )?;
    let source_sha256 = sha256_hex(f.as_bytes());
    write_json(
        &tmp.join(PROVENANCE_FILE),
        &json!({
            "source_file": gguf_path.file_name().map(|n| n.to_string_lossy().into_owned()),
            "source_sha256": source_sha256,
            "dtype": opts.dtype.torch_name(),
            "importer": concat!("palr ", env!("CARGO_PKG_VERSION")),
            "q_k_rows": "unpermuted from llama.cpp order to Hugging Face order",
        }),
    )?;
    // The tokenizer must load before the directory is published.
    crate::tokenizer::Tokenizer::from_file(tmp.join("tokenizer.json"))?;

    // Publish.
    if out_dir.exists() {
        let old = parent.join(format!(".{base}.old-{}", std::process::id()));
        std::fs::rename(out_dir, &old).map_err(io("cannot move aside", out_dir))?;
        if let Err(e) = std::fs::rename(&tmp, out_dir) {
            let _ = std::fs::rename(&old, out_dir);
            return Err(io("cannot rename into place", out_dir)(e));
        }
        let _ = std::fs::remove_dir_all(&old);
    } else {
        std::fs::rename(&tmp, out_dir).map_err(io("cannot rename into place", out_dir))?;
    }
    guard.0 = None;

    Ok(ImportSummary {
        out_dir: out_dir.to_path_buf(),
        n_tensors: planned.len(),
        tie_word_embeddings: tied,
        source_sha256,
        warnings: tok.warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_small_example() {
        // One head of dim 4, one column: HF rows [0, 1, 2, 3] are stored by llama.cpp as
        // [0, 2, 1, 3] (pairs (0, 2) and (1, 3) become adjacent).
        assert_eq!(
            permute_qk_rows(&[0, 1, 2, 3], 4, 1, 1).unwrap(),
            [0, 2, 1, 3]
        );
        assert_eq!(
            unpermute_qk_rows(&[0, 2, 1, 3], 4, 1, 1).unwrap(),
            [0, 1, 2, 3]
        );
        // Two heads of dim 6, two columns: rows carry (row*10, row*10+1).
        let hf: Vec<u32> = (0..12).flat_map(|r| [r * 10, r * 10 + 1]).collect();
        let gguf = permute_qk_rows(&hf, 12, 2, 2).unwrap();
        let rows: Vec<u32> = gguf.chunks(2).map(|c| c[0] / 10).collect();
        assert_eq!(rows, [0, 3, 1, 4, 2, 5, 6, 9, 7, 10, 8, 11]);
        assert_eq!(unpermute_qk_rows(&gguf, 12, 2, 2).unwrap(), hf);
    }

    #[test]
    fn permutation_inverse_identity() {
        for (rows, cols, heads) in [(576, 3, 9), (192, 5, 3), (16, 1, 4), (64, 7, 1)] {
            let w: Vec<f32> = (0..rows * cols).map(|x| x as f32).collect();
            let p = permute_qk_rows(&w, rows, cols, heads).unwrap();
            assert_ne!(p, w);
            assert_eq!(unpermute_qk_rows(&p, rows, cols, heads).unwrap(), w);
            assert_eq!(
                permute_qk_rows(
                    &unpermute_qk_rows(&w, rows, cols, heads).unwrap(),
                    rows,
                    cols,
                    heads
                )
                .unwrap(),
                w
            );
        }
        // Sizes that do not split into heads of even size.
        assert!(unpermute_qk_rows(&[0f32; 6], 6, 1, 2).is_none());
        assert!(unpermute_qk_rows(&[0f32; 8], 8, 2, 2).is_none());
        assert!(unpermute_qk_rows(&[0f32; 8], 8, 1, 0).is_none());
    }

    #[test]
    fn dtype_parsing() {
        assert_eq!("f32".parse::<OutDtype>().unwrap(), OutDtype::F32);
        assert_eq!("bf16".parse::<OutDtype>().unwrap(), OutDtype::Bf16);
        assert!(
            "f16"
                .parse::<OutDtype>()
                .unwrap_err()
                .contains("f32 or bf16")
        );
    }

    #[test]
    fn sha256_known_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
