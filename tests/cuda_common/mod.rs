//! Helpers of the GPU tests (`tests/cuda_*.rs`): the backend or a skip, fresh
//! random inputs, relative errors, synthetic checkpoints.
//!
//! The GPU tests are `#[ignore]`d, so machines without a GPU report them as ignored;
//! when one is run (`--include-ignored`) and no NVIDIA driver or device exists, it
//! fails: a GPU run cannot pass by skipping.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;

use half::bf16;
use palr::engine::cuda::CudaBackend;
use safetensors::tensor::TensorView;

/// The device ordinal the tests use (`PALR_CUDA_DEVICE`, default 0).
pub fn ordinal() -> usize {
    std::env::var("PALR_CUDA_DEVICE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The CUDA backend; a test that runs needs one, so its absence fails the test.
pub fn gpu() -> CudaBackend {
    CudaBackend::new(ordinal()).unwrap_or_else(|e| {
        panic!(
            "the CUDA backend failed to start: {e} (GPU tests need an NVIDIA GPU, or the \
             emulator of scripts/gpu/fake-gpu.sh)"
        )
    })
}

/// A seed for this run: `PALR_TEST_SEED` or the clock (printed, to reproduce a failure).
pub fn fresh_seed(test: &str) -> u64 {
    let seed = std::env::var("PALR_TEST_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("{test}: seed {seed} (PALR_TEST_SEED={seed} reproduces it)");
    seed
}

/// A small deterministic generator (PCG-style LCG) for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let x = self.0;
        (x ^ (x >> 29)).wrapping_mul(0xbf58476d1ce4e5b9) ^ (x >> 32)
    }
    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform() * scale).collect()
    }
    /// Values already representable in bf16 (so both backends see the same numbers).
    pub fn vec_bf16(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| bf16::from_f32(self.uniform() * scale).to_f32())
            .collect()
    }
}

/// ‖out − ref‖ / ‖ref‖ in f64; infinite when `out` holds a NaN or an infinity.
pub fn rel_err(out: &[f32], reference: &[f32]) -> f64 {
    assert_eq!(out.len(), reference.len(), "length mismatch");
    if out.iter().any(|x| !x.is_finite()) {
        return f64::INFINITY;
    }
    let (mut num, mut den) = (0f64, 0f64);
    for (&o, &r) in out.iter().zip(reference) {
        num += (o as f64 - r as f64).powi(2);
        den += (r as f64).powi(2);
    }
    if den == 0.0 {
        return if num == 0.0 { 0.0 } else { f64::INFINITY };
    }
    (num / den).sqrt()
}

/// Asserts `rel_err(out, reference) <= tol` and prints the error.
pub fn assert_close(what: &str, out: &[f32], reference: &[f32], tol: f64) {
    let e = rel_err(out, reference);
    eprintln!("{what}: relative error {e:.2e} (bound {tol:.0e})");
    assert!(
        e <= tol,
        "{what}: relative error {e:.3e} exceeds {tol:.0e} (NaN or inf counts as infinite)"
    );
}

/// Writes a Hugging Face checkpoint directory (config.json + bf16 safetensors)
/// with uniform random weights for the config `config_json`, like a trained
/// model in scale: matrices in ±1/sqrt(in), norms in 1 ± 0.3, embeddings in ±1.
pub fn write_synthetic_checkpoint(dir: &Path, config_json: &str, seed: u64) {
    let cfg = palr::model::LlamaConfig::from_json(config_json).unwrap();
    let mut rng = Rng::new(seed);
    let (d, h, v) = (cfg.dim, cfg.hidden_dim, cfg.vocab_size);
    let mut tensors: BTreeMap<String, (Vec<usize>, Vec<u8>)> = BTreeMap::new();
    let mut put = |name: String, shape: Vec<usize>, scale: f32, offset: f32, rng: &mut Rng| {
        let n: usize = shape.iter().product();
        let bytes: Vec<u8> = (0..n)
            .flat_map(|_| bf16::from_f32(offset + rng.uniform() * scale).to_le_bytes())
            .collect();
        tensors.insert(name, (shape, bytes));
    };
    put(
        "model.embed_tokens.weight".into(),
        vec![v, d],
        1.0,
        0.0,
        &mut rng,
    );
    for i in 0..cfg.n_layers {
        let p = format!("model.layers.{i}");
        let s = 1.0 / (d as f32).sqrt();
        put(
            format!("{p}.self_attn.q_proj.weight"),
            vec![cfg.q_dim(), d],
            s,
            0.0,
            &mut rng,
        );
        put(
            format!("{p}.self_attn.k_proj.weight"),
            vec![cfg.kv_dim(), d],
            s,
            0.0,
            &mut rng,
        );
        put(
            format!("{p}.self_attn.v_proj.weight"),
            vec![cfg.kv_dim(), d],
            s,
            0.0,
            &mut rng,
        );
        let so = 1.0 / (cfg.q_dim() as f32).sqrt();
        put(
            format!("{p}.self_attn.o_proj.weight"),
            vec![d, cfg.q_dim()],
            so,
            0.0,
            &mut rng,
        );
        put(
            format!("{p}.mlp.gate_proj.weight"),
            vec![h, d],
            s,
            0.0,
            &mut rng,
        );
        put(
            format!("{p}.mlp.up_proj.weight"),
            vec![h, d],
            s,
            0.0,
            &mut rng,
        );
        let sd = 1.0 / (h as f32).sqrt();
        put(
            format!("{p}.mlp.down_proj.weight"),
            vec![d, h],
            sd,
            0.0,
            &mut rng,
        );
        put(
            format!("{p}.input_layernorm.weight"),
            vec![d],
            0.3,
            1.0,
            &mut rng,
        );
        put(
            format!("{p}.post_attention_layernorm.weight"),
            vec![d],
            0.3,
            1.0,
            &mut rng,
        );
    }
    put("model.norm.weight".into(), vec![d], 0.3, 1.0, &mut rng);
    if !cfg.tie_word_embeddings {
        put(
            "lm_head.weight".into(),
            vec![v, d],
            1.0 / (d as f32).sqrt(),
            0.0,
            &mut rng,
        );
    }
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), config_json).unwrap();
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, (shape, b))| {
            (
                n.clone(),
                TensorView::new(safetensors::Dtype::BF16, shape.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
}
