//! LoRA adapters in the PEFT format (Hu et al. 2021, "LoRA: Low-Rank Adaptation of
//! Large Language Models"; layout of Hugging Face PEFT).
//!
//! An adapter directory holds `adapter_config.json` (`r`, `lora_alpha`,
//! `target_modules`, `use_rslora`, `fan_in_fan_out`, `rank_pattern`, `alpha_pattern`)
//! and `adapter_model.safetensors` with, for each adapted linear layer `W (out, in)`,
//! `…<module>.lora_A.weight (r, in)` and `…<module>.lora_B.weight (out, r)`. The layer
//! computes `y = x·Wᵀ + s·(x·Aᵀ)·Bᵀ` with `s = alpha / r` (`alpha / sqrt(r)` with
//! rsLoRA). This module reads and checks adapters against the base model's shapes;
//! the engine applies them merged (`W + s·B·A`) or unmerged.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Checkpoint, LlamaConfig, ModelError, Result, TensorRef};

/// The linear layers of a LLaMA block an adapter may target, by PEFT module name.
pub const MODULES: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// `adapter_config.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct AdapterConfig {
    #[serde(default)]
    pub peft_type: Option<String>,
    pub r: usize,
    pub lora_alpha: f64,
    #[serde(default)]
    pub target_modules: Option<TargetModules>,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default)]
    pub rank_pattern: HashMap<String, usize>,
    #[serde(default)]
    pub alpha_pattern: HashMap<String, f64>,
    #[serde(default)]
    pub bias: Option<String>,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    List(Vec<String>),
    /// A regular expression or `"all-linear"`.
    One(String),
}

/// One adapted layer's low-rank pair.
#[derive(Debug)]
pub struct LoraPair<'a> {
    /// `(r, in)`.
    pub a: TensorRef<'a>,
    /// `(out, r)`.
    pub b: TensorRef<'a>,
    pub scale: f32,
}

/// An opened, checked adapter.
pub struct Adapter {
    pub name: String,
    pub dir: PathBuf,
    pub config: AdapterConfig,
    ck: Checkpoint,
    /// (layer, module) → (A name, B name).
    pairs: BTreeMap<(usize, usize), (String, String)>,
}

impl std::fmt::Debug for Adapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Adapter({:?}, r={}, {} layers adapted)",
            self.name,
            self.config.r,
            self.pairs.len()
        )
    }
}

fn bad(dir: &Path, msg: impl std::fmt::Display) -> ModelError {
    ModelError::Adapter(format!("{}: {msg}", dir.display()))
}

/// Splits a PEFT tensor name into (layer, module, "A"|"B"), accepting the saved form
/// (`base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight`) and the
/// adapter-named form (`….lora_A.default.weight`).
fn parse_name(name: &str) -> Option<(usize, usize, char)> {
    let rest = name.strip_prefix("base_model.model.").unwrap_or(name);
    let rest = rest.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let rest = rest
        .strip_prefix("self_attn.")
        .or_else(|| rest.strip_prefix("mlp."))?;
    let (module, rest) = rest.split_once('.')?;
    let module = MODULES.iter().position(|m| *m == module)?;
    let ab = match rest {
        "lora_A.weight" | "lora_A.default.weight" => 'A',
        "lora_B.weight" | "lora_B.default.weight" => 'B',
        _ => return None,
    };
    Some((layer, module, ab))
}

/// PEFT matches `rank_pattern` / `alpha_pattern` keys against the end of a module's full name.
fn pattern_value<T: Copy>(patterns: &HashMap<String, T>, full_name: &str) -> Option<T> {
    patterns
        .iter()
        .filter(|(k, _)| full_name == k.as_str() || full_name.ends_with(&format!(".{k}")))
        .max_by_key(|(k, _)| k.len())
        .map(|(_, v)| *v)
}

impl Adapter {
    /// Opens `dir` and checks every adapted layer against `base`'s shapes.
    pub fn open(name: &str, dir: &Path, base: &LlamaConfig) -> Result<Self> {
        let cfg_path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| ModelError::Io {
            path: cfg_path.clone(),
            source: e,
        })?;
        let config: AdapterConfig = serde_json::from_str(&text)
            .map_err(|e| bad(dir, format!("adapter_config.json: {e}")))?;
        // Newer PEFT options that change what the adapter computes: refuse them when set
        // rather than silently computing something else.
        let raw: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        for key in [
            "layer_replication",
            "lora_bias",
            "use_qalora",
            "use_bdlora",
            "trainable_token_indices",
            "target_parameters",
            "alora_invocation_tokens",
        ] {
            let set = match raw.get(key) {
                None | Some(serde_json::Value::Null) | Some(serde_json::Value::Bool(false)) => {
                    false
                }
                Some(serde_json::Value::Array(a)) => !a.is_empty(),
                Some(serde_json::Value::Object(o)) => !o.is_empty(),
                Some(_) => true,
            };
            if set {
                return Err(bad(
                    dir,
                    format!("adapter_config.json sets {key:?}, which palr does not support"),
                ));
            }
        }
        if let Some(t) = &config.peft_type
            && t != "LORA"
        {
            return Err(bad(
                dir,
                format!("peft_type {t:?} is not supported; only LORA adapters"),
            ));
        }
        if config.use_dora {
            return Err(bad(dir, "DoRA adapters (use_dora) are not supported"));
        }
        if config.bias.as_deref().is_some_and(|b| b != "none") {
            return Err(bad(
                dir,
                format!(
                    "bias = {:?} is not supported; train with bias=\"none\"",
                    config.bias
                ),
            ));
        }
        if config
            .modules_to_save
            .as_ref()
            .is_some_and(|m| !m.is_empty())
        {
            return Err(bad(
                dir,
                "modules_to_save (fully trained extra modules) is not supported",
            ));
        }
        if config.r == 0 || !(config.lora_alpha.is_finite()) {
            return Err(bad(dir, "r must be positive and lora_alpha finite"));
        }
        if config.fan_in_fan_out {
            // PEFT itself resets this flag for torch.nn.Linear layers, which every LLaMA
            // projection is: the stored A and B are the same either way.
            tracing::warn!(
                adapter = name,
                "fan_in_fan_out is set but LLaMA layers are nn.Linear; ignoring it as PEFT does"
            );
        }
        let file = "adapter_model.safetensors";
        if !dir.join(file).exists() {
            return Err(bad(
                dir,
                format!("{file} not found (only safetensors adapters are read)"),
            ));
        }
        let ck = Checkpoint::open_files(dir, &[file.to_string()])?;
        let mut halves: BTreeMap<(usize, usize), (Option<String>, Option<String>)> =
            BTreeMap::new();
        for tname in ck.names() {
            let (layer, module, ab) = parse_name(tname).ok_or_else(|| {
                bad(
                    dir,
                    format!("tensor {tname:?} is not a LoRA weight of a LLaMA projection"),
                )
            })?;
            if layer >= base.n_layers {
                return Err(bad(
                    dir,
                    format!(
                        "tensor {tname:?}: the base model has {} layers",
                        base.n_layers
                    ),
                ));
            }
            let e = halves.entry((layer, module)).or_default();
            let slot = if ab == 'A' { &mut e.0 } else { &mut e.1 };
            *slot = Some(tname.to_string());
        }
        let mut pairs = BTreeMap::new();
        for ((layer, module), (a, b)) in halves {
            match (a, b) {
                (Some(a), Some(b)) => {
                    pairs.insert((layer, module), (a, b));
                }
                (a, b) => {
                    let have = a.or(b).unwrap_or_default();
                    return Err(bad(
                        dir,
                        format!("{have:?} has no matching lora_A/lora_B partner"),
                    ));
                }
            }
        }
        if pairs.is_empty() {
            return Err(bad(dir, "the adapter has no LoRA weights"));
        }
        // A list of target modules must name the projections the weights adapt; one that
        // matches no LLaMA projection means the adapter was made for another architecture.
        if let Some(TargetModules::List(list)) = &config.target_modules {
            if !list.iter().any(|m| MODULES.contains(&m.as_str())) {
                return Err(bad(
                    dir,
                    format!(
                        "target_modules {list:?} match no projection of a LLaMA model ({}): the \
                         adapter was trained for another architecture",
                        MODULES.join(", ")
                    ),
                ));
            }
            if let Some(&(layer, module)) = pairs
                .keys()
                .find(|(_, m)| !list.iter().any(|t| t == MODULES[*m]))
            {
                return Err(bad(
                    dir,
                    format!(
                        "layer {layer}'s {} has LoRA weights but target_modules {list:?} does not \
                         list it: adapter_config.json and the weights disagree",
                        MODULES[module]
                    ),
                ));
            }
        }
        let adapter = Adapter {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            config,
            ck,
            pairs,
        };
        // Check every pair's shapes now, so a bad adapter fails at start, not mid-request.
        for &(layer, module) in adapter.pairs.keys() {
            let (out, inp) = module_shape(base, module);
            adapter.pair(layer, module, out, inp)?;
        }
        Ok(adapter)
    }

    /// Largest rank of any adapted layer.
    pub fn max_rank(&self) -> usize {
        self.pairs
            .values()
            .filter_map(|(a, _)| self.ck.get(a).ok().map(|t| t.shape[0]))
            .max()
            .unwrap_or(0)
    }

    /// Layers (layer, module index into [`MODULES`]) this adapter changes.
    pub fn adapted(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.pairs.keys().copied()
    }

    /// The low-rank pair of `(layer, module)` checked against `(out, inp)`, if adapted.
    pub fn pair(
        &self,
        layer: usize,
        module: usize,
        out: usize,
        inp: usize,
    ) -> Result<Option<LoraPair<'_>>> {
        let Some((an, bn)) = self.pairs.get(&(layer, module)) else {
            return Ok(None);
        };
        let a = self.ck.get(an)?;
        let b = self.ck.get(bn)?;
        let r = a.shape.first().copied().unwrap_or(0);
        if a.shape != [r, inp] || b.shape != [out, r] || r == 0 {
            return Err(bad(
                &self.dir,
                format!(
                    "layer {layer} {}: lora_A {:?} and lora_B {:?} do not fit a ({out}, {inp}) weight; expected (r, {inp}) and ({out}, r)",
                    MODULES[module], a.shape, b.shape
                ),
            ));
        }
        let full = format!(
            "model.layers.{layer}.{}.{}",
            if module < 4 { "self_attn" } else { "mlp" },
            MODULES[module]
        );
        let cfg = &self.config;
        let alpha = pattern_value(&cfg.alpha_pattern, &full).unwrap_or(cfg.lora_alpha);
        let declared_r = pattern_value(&cfg.rank_pattern, &full).unwrap_or(cfg.r);
        if declared_r != r {
            return Err(bad(
                &self.dir,
                format!("{full}: the config says r = {declared_r}, the weights have r = {r}"),
            ));
        }
        let scale = if cfg.use_rslora {
            alpha / (r as f64).sqrt()
        } else {
            alpha / r as f64
        };
        Ok(Some(LoraPair {
            a,
            b,
            scale: scale as f32,
        }))
    }
}

/// `(out, in)` of `module` in a block of `cfg`.
pub fn module_shape(cfg: &LlamaConfig, module: usize) -> (usize, usize) {
    match MODULES[module] {
        "q_proj" => (cfg.q_dim(), cfg.dim),
        "k_proj" | "v_proj" => (cfg.kv_dim(), cfg.dim),
        "o_proj" => (cfg.dim, cfg.q_dim()),
        "gate_proj" | "up_proj" => (cfg.hidden_dim, cfg.dim),
        _ => (cfg.dim, cfg.hidden_dim),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_peft_names() {
        assert_eq!(
            parse_name("base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight"),
            Some((3, 0, 'A'))
        );
        assert_eq!(
            parse_name("base_model.model.model.layers.12.mlp.down_proj.lora_B.default.weight"),
            Some((12, 6, 'B'))
        );
        assert_eq!(parse_name("base_model.model.lm_head.lora_A.weight"), None);
        assert_eq!(
            parse_name("base_model.model.model.layers.1.self_attn.q_proj.weight"),
            None
        );
    }

    #[test]
    fn patterns_match_module_suffixes() {
        let mut p = HashMap::new();
        p.insert("q_proj".to_string(), 8usize);
        p.insert("layers.2.self_attn.q_proj".to_string(), 4usize);
        assert_eq!(
            pattern_value(&p, "model.layers.1.self_attn.q_proj"),
            Some(8)
        );
        assert_eq!(
            pattern_value(&p, "model.layers.2.self_attn.q_proj"),
            Some(4)
        );
        assert_eq!(pattern_value(&p, "model.layers.2.self_attn.k_proj"), None);
    }
}
