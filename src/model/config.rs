//! Model configuration: the raw Hugging Face `config.json` and the resolved
//! configuration the engine runs with.
//!
//! `HfConfig` mirrors `config.json` as transformers writes it for
//! `LlamaForCausalLM` and close kin (Mistral, Qwen2), optionals and all; one
//! function, [`LlamaConfig::from_hf`], checks it and resolves defaults, grouped-
//! query attention, `head_dim` and RoPE scaling (`default`, `linear`, `llama3`)
//! into plain numbers. Nothing downstream reads `HfConfig`.

use std::path::Path;

use serde::Deserialize;

use super::{ModelError, Result};

/// `config.json` as written by Hugging Face transformers (4.x and 5.x).
#[derive(Debug, Clone, Deserialize)]
pub struct HfConfig {
    #[serde(default)]
    pub architectures: Vec<String>,
    #[serde(default)]
    pub model_type: Option<String>,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// transformers 4.x: `rope_scaling`; 5.x: `rope_parameters` (which also carries `rope_theta`).
    #[serde(default)]
    pub rope_scaling: Option<RopeScalingJson>,
    #[serde(default)]
    pub rope_parameters: Option<RopeScalingJson>,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    pub vocab_size: usize,
    #[serde(default)]
    pub tie_word_embeddings: Option<bool>,
    #[serde(default)]
    pub attention_bias: Option<bool>,
    #[serde(default)]
    pub mlp_bias: Option<bool>,
    #[serde(default)]
    pub hidden_act: Option<String>,
    #[serde(default)]
    pub sliding_window: Option<usize>,
    #[serde(default)]
    pub bos_token_id: Option<TokenIds>,
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
    #[serde(default)]
    pub pad_token_id: Option<TokenIds>,
    #[serde(default, alias = "_name_or_path", alias = "_model_name_or_path")]
    pub name_or_path: Option<String>,
}

fn default_rms_eps() -> f64 {
    1e-6
}
fn default_max_pos() -> usize {
    2048
}

/// A token id field that may be one id or a list (`eos_token_id: [128001, 128009]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            TokenIds::One(id) => vec![*id],
            TokenIds::Many(ids) => ids.clone(),
        }
    }
}

/// `rope_scaling` / `rope_parameters` object.
#[derive(Debug, Clone, Deserialize)]
pub struct RopeScalingJson {
    #[serde(default, alias = "type")]
    pub rope_type: Option<String>,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub factor: Option<f64>,
    #[serde(default)]
    pub low_freq_factor: Option<f64>,
    #[serde(default)]
    pub high_freq_factor: Option<f64>,
    #[serde(default)]
    pub original_max_position_embeddings: Option<usize>,
}

/// How RoPE frequencies are derived from the base frequencies.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE: `inv_freq[i] = theta^(-2i/d)`.
    Default,
    /// Position interpolation: every frequency divided by `factor`.
    Linear { factor: f64 },
    /// LLaMA 3.1: low frequencies divided by `factor`, high ones kept, a smooth ramp between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
}

/// The configuration the engine runs with, every default resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub architecture: String,
    pub name: String,
    pub dim: usize,
    pub hidden_dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub norm_eps: f32,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Biases on the q, k and v projections.
    pub qkv_bias: bool,
    /// Bias on the attention output projection.
    pub o_bias: bool,
    /// Biases on gate, up and down projections.
    pub mlp_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

/// Architectures whose checkpoints have LLaMA's layout (same tensor names, same block).
const SUPPORTED_ARCHS: &[&str] = &["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"];

impl LlamaConfig {
    /// Reads and resolves `dir/config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| ModelError::Io {
            path: path.clone(),
            source: e,
        })?;
        Self::from_json(&text).map_err(|e| match e {
            ModelError::Config(msg) => ModelError::Config(format!("{}: {msg}", path.display())),
            other => other,
        })
    }

    pub fn from_json(text: &str) -> Result<Self> {
        let hf: HfConfig = serde_json::from_str(text)
            .map_err(|e| ModelError::Config(format!("invalid config.json: {e}")))?;
        Self::from_hf(&hf)
    }

    /// Checks a raw config and resolves it.
    pub fn from_hf(hf: &HfConfig) -> Result<Self> {
        let bad = |msg: String| Err(ModelError::Config(msg));
        let architecture = match hf.architectures.first() {
            Some(a) => a.clone(),
            None => match hf.model_type.as_deref() {
                Some("llama") | None => "LlamaForCausalLM".to_string(),
                Some(other) => {
                    return bad(format!(
                        "unsupported model_type {other:?} and no `architectures`; supported: {SUPPORTED_ARCHS:?}"
                    ));
                }
            },
        };
        if !SUPPORTED_ARCHS.contains(&architecture.as_str()) {
            return bad(format!(
                "unsupported architecture {architecture:?}; supported: {SUPPORTED_ARCHS:?}"
            ));
        }
        if let Some(act) = &hf.hidden_act
            && act != "silu"
        {
            return bad(format!(
                "unsupported hidden_act {act:?}: only \"silu\" (SwiGLU) is implemented"
            ));
        }
        let positive = [
            ("hidden_size", hf.hidden_size),
            ("intermediate_size", hf.intermediate_size),
            ("num_hidden_layers", hf.num_hidden_layers),
            ("num_attention_heads", hf.num_attention_heads),
            ("vocab_size", hf.vocab_size),
            ("max_position_embeddings", hf.max_position_embeddings),
        ];
        for (name, v) in positive {
            if v == 0 {
                return bad(format!("{name} must be positive"));
            }
            if v > (1 << 24) {
                return bad(format!("{name} = {v} is implausibly large"));
            }
        }
        let n_heads = hf.num_attention_heads;
        let n_kv_heads = hf.num_key_value_heads.unwrap_or(n_heads);
        if n_kv_heads == 0 || !n_heads.is_multiple_of(n_kv_heads) {
            return bad(format!(
                "num_attention_heads ({n_heads}) must be a positive multiple of num_key_value_heads ({n_kv_heads})"
            ));
        }
        let head_dim = match hf.head_dim {
            Some(d) => d,
            None => {
                if !hf.hidden_size.is_multiple_of(n_heads) {
                    return bad(format!(
                        "hidden_size ({}) is not divisible by num_attention_heads ({n_heads}) and no head_dim is given",
                        hf.hidden_size
                    ));
                }
                hf.hidden_size / n_heads
            }
        };
        if head_dim == 0 || head_dim % 2 != 0 || head_dim > 1024 {
            return bad(format!(
                "head_dim = {head_dim} must be even and in 2..=1024"
            ));
        }
        if !(hf.rms_norm_eps.is_finite() && hf.rms_norm_eps > 0.0) {
            return bad(format!(
                "rms_norm_eps = {} must be positive",
                hf.rms_norm_eps
            ));
        }
        if let Some(w) = hf.sliding_window
            && w < hf.max_position_embeddings
        {
            return bad(format!(
                "sliding_window = {w} is not supported (only full attention); use a checkpoint without it"
            ));
        }
        let rope = hf.rope_parameters.as_ref().or(hf.rope_scaling.as_ref());
        let rope_theta = hf
            .rope_theta
            .or(rope.and_then(|r| r.rope_theta))
            .unwrap_or(10_000.0);
        if !(rope_theta.is_finite() && rope_theta > 1.0) {
            return bad(format!("rope_theta = {rope_theta} must be > 1"));
        }
        let rope_scaling = match rope {
            None => RopeScaling::Default,
            Some(r) => resolve_rope(r, hf.max_position_embeddings)?,
        };
        // LLaMA's `attention_bias` covers q/k/v/o; Qwen2 has q/k/v biases without saying so.
        let attention_bias = hf.attention_bias.unwrap_or(false);
        let qkv_bias = attention_bias || architecture == "Qwen2ForCausalLM";
        let first = |ids: &Option<TokenIds>| ids.as_ref().and_then(|t| t.to_vec().first().copied());
        Ok(LlamaConfig {
            architecture,
            name: hf.name_or_path.clone().unwrap_or_default(),
            dim: hf.hidden_size,
            hidden_dim: hf.intermediate_size,
            n_layers: hf.num_hidden_layers,
            n_heads,
            n_kv_heads,
            head_dim,
            vocab_size: hf.vocab_size,
            norm_eps: hf.rms_norm_eps as f32,
            rope_theta,
            rope_scaling,
            max_position_embeddings: hf.max_position_embeddings,
            tie_word_embeddings: hf.tie_word_embeddings.unwrap_or(false),
            qkv_bias,
            o_bias: attention_bias,
            mlp_bias: hf.mlp_bias.unwrap_or(false),
            bos_token_id: first(&hf.bos_token_id),
            eos_token_ids: hf
                .eos_token_id
                .as_ref()
                .map(TokenIds::to_vec)
                .unwrap_or_default(),
        })
    }

    /// Width of the query projection output: `n_heads * head_dim`.
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    /// Width of each of the key and value projection outputs.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// RoPE inverse frequencies, `head_dim / 2` of them, scaling applied.
    pub fn rope_inv_freq(&self) -> Vec<f64> {
        let d = self.head_dim as f64;
        (0..self.head_dim / 2)
            .map(|i| {
                let base = 1.0 / self.rope_theta.powf(2.0 * i as f64 / d);
                match &self.rope_scaling {
                    RopeScaling::Default => base,
                    RopeScaling::Linear { factor } => base / factor,
                    RopeScaling::Llama3 {
                        factor,
                        low_freq_factor,
                        high_freq_factor,
                        original_max_position_embeddings,
                    } => {
                        let old = *original_max_position_embeddings as f64;
                        let low_wavelen = old / low_freq_factor;
                        let high_wavelen = old / high_freq_factor;
                        let wavelen = 2.0 * std::f64::consts::PI / base;
                        if wavelen < high_wavelen {
                            base
                        } else if wavelen > low_wavelen {
                            base / factor
                        } else {
                            let smooth = (old / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * base / factor + smooth * base
                        }
                    }
                }
            })
            .collect()
    }
}

fn resolve_rope(r: &RopeScalingJson, max_pos: usize) -> Result<RopeScaling> {
    let kind = r.rope_type.as_deref().unwrap_or("default");
    let factor = |r: &RopeScalingJson| -> Result<f64> {
        match r.factor {
            Some(f) if f.is_finite() && f > 0.0 => Ok(f),
            other => Err(ModelError::Config(format!(
                "rope scaling {kind:?} needs a positive `factor`, got {other:?}"
            ))),
        }
    };
    Ok(match kind {
        "default" => RopeScaling::Default,
        "linear" => RopeScaling::Linear { factor: factor(r)? },
        "llama3" => {
            let low = r.low_freq_factor.unwrap_or(1.0);
            let high = r.high_freq_factor.unwrap_or(4.0);
            if !(low > 0.0 && high > low) {
                return Err(ModelError::Config(format!(
                    "llama3 rope scaling needs 0 < low_freq_factor < high_freq_factor, got {low} and {high}"
                )));
            }
            RopeScaling::Llama3 {
                factor: factor(r)?,
                low_freq_factor: low,
                high_freq_factor: high,
                original_max_position_embeddings: r
                    .original_max_position_embeddings
                    .unwrap_or(max_pos),
            }
        }
        other => {
            return Err(ModelError::Config(format!(
                "unsupported rope scaling type {other:?}; supported: default, linear, llama3"
            )));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOL: &str = r#"{"architectures":["LlamaForCausalLM"],"hidden_size":576,"intermediate_size":1536,
        "num_hidden_layers":30,"num_attention_heads":9,"num_key_value_heads":3,"head_dim":64,
        "rms_norm_eps":1e-5,"rope_parameters":{"rope_theta":100000.0,"rope_type":"default"},
        "max_position_embeddings":8192,"vocab_size":49152,"tie_word_embeddings":true,
        "bos_token_id":1,"eos_token_id":2,"hidden_act":"silu"}"#;

    #[test]
    fn resolves_smollm2() {
        let c = LlamaConfig::from_json(SMOL).unwrap();
        assert_eq!(
            (c.dim, c.n_heads, c.n_kv_heads, c.head_dim),
            (576, 9, 3, 64)
        );
        assert_eq!(c.rope_theta, 100000.0);
        assert_eq!(c.rope_scaling, RopeScaling::Default);
        assert!(c.tie_word_embeddings);
        assert_eq!(c.eos_token_ids, vec![2]);
        assert_eq!(c.kv_dim(), 192);
    }

    #[test]
    fn llama3_scaling_matches_reference_values() {
        // Llama 3.1 8B settings; reference values from the published formula.
        let json = r#"{"architectures":["LlamaForCausalLM"],"hidden_size":4096,"intermediate_size":14336,
            "num_hidden_layers":32,"num_attention_heads":32,"num_key_value_heads":8,"rope_theta":500000.0,
            "rope_scaling":{"factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,
            "original_max_position_embeddings":8192,"rope_type":"llama3"},
            "max_position_embeddings":131072,"vocab_size":128256,"eos_token_id":[128001,128008,128009]}"#;
        let c = LlamaConfig::from_json(json).unwrap();
        assert_eq!(c.head_dim, 128);
        assert_eq!(c.eos_token_ids, vec![128001, 128008, 128009]);
        let f = c.rope_inv_freq();
        // High frequencies untouched, the lowest divided by the factor.
        assert_eq!(f[0], 1.0);
        let plain_last = 1.0 / 500000f64.powf(126.0 / 128.0);
        assert!((f[63] - plain_last / 8.0).abs() < 1e-15);
        // Monotone decreasing across the ramp.
        assert!(f.windows(2).all(|w| w[0] > w[1]));
    }

    #[test]
    fn rejects_what_it_cannot_run() {
        let cases = [
            (
                SMOL.replace("LlamaForCausalLM", "GPT2LMHeadModel"),
                "unsupported architecture",
            ),
            (
                SMOL.replace("\"num_key_value_heads\":3", "\"num_key_value_heads\":4"),
                "multiple",
            ),
            (SMOL.replace("\"silu\"", "\"gelu\""), "hidden_act"),
            (SMOL.replace("\"default\"", "\"yarn\""), "yarn"),
            (
                SMOL.replace("\"hidden_size\":576", "\"hidden_size\":0"),
                "hidden_size",
            ),
            ("{".to_string(), "invalid config.json"),
            (SMOL.replace("\"vocab_size\":49152,", ""), "vocab_size"),
        ];
        for (json, want) in cases {
            let err = LlamaConfig::from_json(&json).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should mention {want:?}");
        }
    }
}

/// The parts of `generation_config.json` palr uses: end-of-sequence ids and the
/// model's default sampling settings.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct GenerationConfig {
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
    #[serde(default)]
    pub do_sample: Option<bool>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_k: Option<usize>,
    #[serde(default)]
    pub top_p: Option<f32>,
}

impl GenerationConfig {
    /// Reads `dir/generation_config.json`; a missing file is the empty config.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("generation_config.json");
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| ModelError::Config(format!("{}: invalid JSON: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(ModelError::Io { path, source: e }),
        }
    }

    /// End-of-sequence ids: this file's, else the model config's.
    pub fn eos_ids(&self, cfg: &LlamaConfig) -> Vec<u32> {
        match &self.eos_token_id {
            Some(ids) => ids.to_vec(),
            None => cfg.eos_token_ids.clone(),
        }
    }
}
