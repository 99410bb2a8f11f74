//! Models with random weights made directly on the GPU, for benchmarks of shapes
//! too large to ship (a LLaMA-2-7B-shaped model is 13.5 GB of bf16): no file, no
//! host copy. Speed does not depend on the weights' values, only their shapes.
//!
//! Weights are uniform in `±1/sqrt(in_features)` (so activations keep their
//! scale through the layers), norms in `1 ± 0.3`, embeddings in `±1`.

use crate::engine::backend::Backend;
use crate::engine::llama::{Attention, Block, Linear, Llama, Lora, LoraWeights, Mlp};
use crate::engine::{EngineError, Result};
use crate::model::LlamaConfig;
use crate::model::lora::MODULES;

use super::{CudaBackend, CudaBuf};

/// Hugging Face `config.json` of SmolLM2-135M-Instruct (the default model).
pub const SMOLLM2_135M: &str = r#"{
  "architectures": ["LlamaForCausalLM"], "model_type": "llama",
  "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
  "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
  "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "max_position_embeddings": 8192,
  "vocab_size": 49152, "tie_word_embeddings": true, "bos_token_id": 1, "eos_token_id": 2,
  "hidden_act": "silu", "_name_or_path": "synthetic SmolLM2-135M shape"
}"#;

/// Hugging Face `config.json` of LLaMA-2-7B (Touvron et al. 2023).
pub const LLAMA2_7B: &str = r#"{
  "architectures": ["LlamaForCausalLM"], "model_type": "llama",
  "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
  "num_attention_heads": 32, "num_key_value_heads": 32,
  "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 4096,
  "vocab_size": 32000, "tie_word_embeddings": false, "bos_token_id": 1, "eos_token_id": 2,
  "hidden_act": "silu", "_name_or_path": "synthetic LLaMA-2-7B shape"
}"#;

/// A shape by name: `smollm2-135m` or `llama2-7b`.
pub fn preset(name: &str) -> Result<LlamaConfig> {
    let json = match name {
        "smollm2-135m" => SMOLLM2_135M,
        "llama2-7b" => LLAMA2_7B,
        other => {
            return Err(EngineError::Invalid(format!(
                "unknown model shape {other:?}; use smollm2-135m or llama2-7b"
            )));
        }
    };
    Ok(LlamaConfig::from_json(json)?)
}

/// Bytes of bf16 weights a model of `cfg` holds on the GPU.
pub fn weight_bytes(cfg: &LlamaConfig) -> usize {
    2 * parameter_count(cfg)
}

/// Parameters of the matrices (norms and biases excluded).
pub fn parameter_count(cfg: &LlamaConfig) -> usize {
    let (d, v) = (cfg.dim, cfg.vocab_size);
    let head = if cfg.tie_word_embeddings { 0 } else { v * d };
    v * d + layer_parameter_count(cfg) + head
}

/// Parameters of the decoder layers' matrices (q, k, v, o, gate, up, down).
pub fn layer_parameter_count(cfg: &LlamaConfig) -> usize {
    let (d, h) = (cfg.dim, cfg.hidden_dim);
    let per_layer = d * cfg.q_dim() + 2 * d * cfg.kv_dim() + cfg.q_dim() * d + 3 * d * h;
    cfg.n_layers * per_layer
}

/// A model of shape `cfg` with random weights from `seed`, made on `backend`.
pub fn llama(cfg: LlamaConfig, backend: CudaBackend, seed: u64) -> Result<Llama<CudaBackend>> {
    let b = &backend;
    let mut next_seed = seed.wrapping_mul(1_000_003);
    let mut seed = move || {
        next_seed = next_seed.wrapping_add(1);
        next_seed
    };
    let (d, hd) = (cfg.dim, cfg.hidden_dim);
    let mut lin = |out: usize, inp: usize, bias: bool| -> Result<Linear<CudaBackend>> {
        let w = b.random_mat(out, inp, seed(), 1.0 / (inp as f32).sqrt())?;
        let bias = if bias {
            let mut v = b.alloc(out)?;
            b.fill_uniform(&mut v, seed(), 0.5, 0.0)?;
            Some(v)
        } else {
            None
        };
        Ok(Linear { w, bias })
    };
    let norm = |s: u64| -> Result<CudaBuf> {
        let mut v = b.alloc(d)?;
        b.fill_uniform(&mut v, s, 0.3, 1.0)?;
        Ok(v)
    };
    let mut blocks = Vec::with_capacity(cfg.n_layers);
    for i in 0..cfg.n_layers {
        let attn = Attention {
            q: lin(cfg.q_dim(), d, cfg.qkv_bias)?,
            k: lin(cfg.kv_dim(), d, cfg.qkv_bias)?,
            v: lin(cfg.kv_dim(), d, cfg.qkv_bias)?,
            o: lin(d, cfg.q_dim(), cfg.o_bias)?,
        };
        let mlp = Mlp {
            gate: lin(hd, d, cfg.mlp_bias)?,
            up: lin(hd, d, cfg.mlp_bias)?,
            down: lin(d, hd, cfg.mlp_bias)?,
        };
        let s = ((i as u64 + 1) * 7919) ^ 0xabcd;
        blocks.push(Block {
            attn_norm: norm(s)?,
            attn,
            mlp_norm: norm(s + 1)?,
            mlp,
        });
    }
    let embed = b.random_mat(cfg.vocab_size, d, 0xe4bed, 1.0)?;
    let lm_head = if cfg.tie_word_embeddings {
        None
    } else {
        Some(b.random_mat(cfg.vocab_size, d, 0x4ead, 1.0 / (d as f32).sqrt())?)
    };
    let final_norm = norm(0xf1a1)?;
    b.synchronize()?;
    Ok(Llama::from_parts(
        cfg, backend, embed, blocks, final_norm, lm_head,
    ))
}

/// One random unmerged LoRA adapter of rank `rank` (scale 2, as alpha = 2r) on every
/// projection of every block of `llama`, for its sessions to run with
/// ([`Llama::set_adapter`]).
pub fn random_lora(
    llama: &Llama<CudaBackend>,
    rank: usize,
    seed: u64,
) -> Result<LoraWeights<CudaBackend>> {
    let b = &llama.backend;
    let mut n = 0u64;
    let mut weights = LoraWeights {
        layers: Vec::with_capacity(llama.blocks.len()),
        max_rank: rank,
        projections: 0,
        parameters: 0,
    };
    for blk in &llama.blocks {
        // In MODULES order.
        let linears = [
            &blk.attn.q,
            &blk.attn.k,
            &blk.attn.v,
            &blk.attn.o,
            &blk.mlp.gate,
            &blk.mlp.up,
            &blk.mlp.down,
        ];
        let mut slots: [Option<Lora<CudaBackend>>; MODULES.len()] = Default::default();
        for (lin, slot) in linears.into_iter().zip(&mut slots) {
            let (out, inp) = (lin.w.rows(), lin.w.cols());
            n += 1;
            let s = seed.wrapping_mul(1_000_003).wrapping_add(n);
            let a = b.random_mat(rank, inp, s, 1.0 / (inp as f32).sqrt())?;
            let bm = b.random_mat(out, rank, s ^ 0x5eed, 1.0 / (rank as f32).sqrt())?;
            weights.projections += 1;
            weights.parameters += rank * (out + inp);
            *slot = Some(Lora {
                a,
                b: bm,
                scale: 2.0,
            });
        }
        weights.layers.push(slots);
    }
    b.synchronize()?;
    Ok(weights)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_resolve_and_count_their_parameters() {
        let s = preset("smollm2-135m").unwrap();
        assert_eq!(
            (s.dim, s.n_layers, s.n_heads, s.n_kv_heads, s.head_dim),
            (576, 30, 9, 3, 64)
        );
        // 134.5M parameters in the released checkpoint (tied embeddings; norms excluded here).
        let p = parameter_count(&s);
        assert!((134_000_000..135_000_000).contains(&p), "{p}");
        let l = preset("llama2-7b").unwrap();
        assert_eq!(
            (l.dim, l.hidden_dim, l.head_dim, l.vocab_size),
            (4096, 11008, 128, 32000)
        );
        // 6.74B parameters (norms excluded here: 266k of them).
        let p = parameter_count(&l);
        assert!((6_730_000_000..6_740_000_000).contains(&p), "{p}");
        assert!(preset("gpt-5").is_err());
    }
}
