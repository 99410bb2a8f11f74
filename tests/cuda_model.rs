//! The whole model on the GPU against the CPU backend: a SmolLM2-135M-shaped
//! checkpoint with random bf16 weights (written here, so it runs on any GPU
//! machine), the real SmolLM2-135M-Instruct against the reference fixture where
//! the model directory exists, and sessions on several threads at once.
//!
//! Both backends hold the same bf16 weights; the GPU also rounds projection
//! inputs, attention probabilities and the KV cache to bf16, so logits agree to
//! a few 1e-3 relative, not bit for bit. Where no GPU exists each test prints
//! `skipped: ...` and returns (see tests/cuda_common).

mod cuda_common;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use cuda_common::*;
use palr::engine::backend::Backend;
use palr::engine::cuda::synthetic::SMOLLM2_135M;
use palr::engine::{self, Device, LanguageModel, LoadOptions, Logits, WeightDtype};

/// Bound on ‖gpu − cpu‖ / ‖cpu‖ of whole-model logits. Rounding to bf16 where the
/// GPU does (projection inputs, KV cache, attention output), emulated on the CPU,
/// moved SmolLM2 logits (synthetic and real weights) by 1e-3 to 6e-3.
const MODEL_TOL: f64 = 2e-2;

/// A SmolLM2-shaped checkpoint with random weights, written once per process.
/// `PALR_TEST_SYNTHETIC_LAYERS` (default: SmolLM2's 30) shortens it, for the slow
/// fake device of scripts/fake-gpu.sh.
fn synthetic_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("palr-synthetic-smollm2-{}", std::process::id()));
        let mut config: serde_json::Value = serde_json::from_str(SMOLLM2_135M).unwrap();
        if let Some(n) = std::env::var("PALR_TEST_SYNTHETIC_LAYERS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            config["num_hidden_layers"] = n.into();
            eprintln!("synthetic SmolLM2 shortened to {n} layers (PALR_TEST_SYNTHETIC_LAYERS)");
        }
        let t = std::time::Instant::now();
        write_synthetic_checkpoint(
            &dir,
            &config.to_string(),
            fresh_seed("synthetic SmolLM2 weights"),
        );
        eprintln!("wrote {} in {:.1?}", dir.display(), t.elapsed());
        dir
    })
    .clone()
}

fn load(dir: &std::path::Path, device: Device, max_batch_rows: usize) -> Arc<dyn LanguageModel> {
    let opts = LoadOptions {
        device,
        dtype: WeightDtype::Bf16,
        max_batch_rows,
        ..LoadOptions::default()
    };
    engine::load(dir, &opts).unwrap_or_else(|e| panic!("load on {device}: {e}"))
}

fn tokens(rng: &mut Rng, n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|_| rng.below(vocab) as u32).collect()
}

#[test]
fn synthetic_smollm2_logits_match_cpu() {
    if gpu().is_none() {
        return;
    }
    let dir = synthetic_dir();
    let cpu = load(&dir, Device::Cpu, 512);
    let gpu = load(&dir, Device::Cuda(ordinal()), 512);
    eprintln!("GPU backend: {}", gpu.describe());
    let vocab = cpu.config().vocab_size;
    let mut rng = Rng::new(fresh_seed("synthetic model"));
    let prompt = tokens(&mut rng, 100, vocab);

    // Prefill with every position's logits (tensor-core attention).
    let mut cs = cpu.clone().new_session(256).unwrap();
    let mut gs = gpu.clone().new_session(256).unwrap();
    let c_all = cs.feed(&prompt, Logits::All).unwrap().to_vec();
    let g_all = gs.feed(&prompt, Logits::All).unwrap().to_vec();
    assert_close("prefill, all 100 positions", &g_all, &c_all, MODEL_TOL);

    // Decode token by token (split-sequence attention).
    for step in 0..16 {
        let t = rng.below(vocab) as u32;
        let c = cs.feed(&[t], Logits::Last).unwrap().to_vec();
        let g = gs.feed(&[t], Logits::Last).unwrap().to_vec();
        assert_close(&format!("decode step {step}"), &g, &c, MODEL_TOL);
    }

    // Chunked prefill (chunks of 37 start mid-tile) against one CPU pass.
    let gpu37 = load(&dir, Device::Cuda(ordinal()), 37);
    let mut g37 = gpu37.clone().new_session(256).unwrap();
    let g = g37.feed(&prompt, Logits::Last).unwrap().to_vec();
    assert_close(
        "chunked prefill (37-row chunks)",
        &g,
        &c_all[99 * vocab..],
        MODEL_TOL,
    );

    // A shared prefix copied from another session, then the rest.
    let mut gb = gpu.clone().new_session(256).unwrap();
    gb.copy_prefix_from(gs.as_ref(), 60).unwrap();
    let g = gb.feed(&prompt[60..], Logits::Last).unwrap().to_vec();
    assert_close(
        "copied 60-position prefix + 40",
        &g,
        &c_all[99 * vocab..],
        MODEL_TOL,
    );
}

#[test]
fn synthetic_weights_made_on_the_gpu_run() {
    // The benchmark's models: random weights made on the device, no checkpoint.
    let Some(b) = gpu() else { return };
    let mut cfg = palr::engine::cuda::synthetic::preset("smollm2-135m").unwrap();
    cfg.n_layers = 2;
    let llama = palr::engine::cuda::synthetic::llama(cfg.clone(), b, 3).unwrap();
    let mut norm = vec![0f32; cfg.dim];
    llama
        .backend
        .download(&llama.blocks[1].mlp_norm, 0, &mut norm)
        .unwrap();
    assert!(
        norm.iter().all(|v| (0.7..=1.3).contains(v)),
        "norm weights in 1 ± 0.3"
    );
    assert!(
        norm.iter().any(|v| (v - norm[0]).abs() > 1e-3),
        "norm weights vary"
    );
    let w = llama
        .backend
        .download_mat(&llama.blocks[0].attn.q.w)
        .unwrap();
    let bound = 1.0 / (cfg.dim as f32).sqrt() * 1.01;
    assert!(
        w.iter().all(|v| v.abs() <= bound),
        "q weights in ±1/sqrt(dim)"
    );
    let mean_abs = w.iter().map(|v| v.abs()).sum::<f32>() / w.len() as f32;
    assert!(
        (mean_abs / bound - 0.5).abs() < 0.05,
        "uniform: mean |w| = {mean_abs}, bound {bound}"
    );
    let model: Arc<dyn LanguageModel> = Arc::new(engine::Model::new(llama, 64));
    let mut s = model.new_session(32).unwrap();
    let logits = s
        .feed(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], Logits::Last)
        .unwrap();
    assert!(logits.iter().all(|v| v.is_finite()), "finite logits");
    let spread = logits.iter().cloned().fold(f32::MIN, f32::max)
        - logits.iter().cloned().fold(f32::MAX, f32::min);
    assert!(spread > 1.0, "logits vary (spread {spread})");
}

#[test]
fn concurrent_sessions_agree_with_sequential_ones() {
    if gpu().is_none() {
        return;
    }
    let dir = synthetic_dir();
    let gpu = load(&dir, Device::Cuda(ordinal()), 64);
    let vocab = gpu.config().vocab_size;
    let mut rng = Rng::new(fresh_seed("concurrency"));
    let prompts: Vec<Vec<u32>> = (0..4)
        .map(|i| tokens(&mut rng, 50 + 30 * i, vocab))
        .collect();
    let run = |p: &Vec<u32>| -> Vec<f32> {
        let mut s = gpu.clone().new_session(p.len() + 8).unwrap();
        let mut out = s.feed(p, Logits::Last).unwrap().to_vec();
        for &t in &p[..8] {
            out = s.feed(&[t], Logits::Last).unwrap().to_vec();
        }
        out
    };
    let sequential: Vec<Vec<f32>> = prompts.iter().map(run).collect();
    let concurrent: Vec<Vec<f32>> = std::thread::scope(|sc| {
        let hs: Vec<_> = prompts.iter().map(|p| sc.spawn(move || run(p))).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, (s, c)) in sequential.iter().zip(&concurrent).enumerate() {
        assert_close(
            &format!("session {i}: concurrent vs sequential"),
            c,
            s,
            1e-6,
        );
    }
}

#[test]
fn smollm2_on_gpu_matches_the_reference() {
    if gpu().is_none() {
        return;
    }
    let dir = std::env::var_os("PALR_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/smollm2-135m-instruct")
        });
    if !dir.join("config.json").exists() {
        // The weights (538 MB) are not shipped to GPU machines; the synthetic test
        // above covers the same code there.
        eprintln!(
            "skipped: SmolLM2 not found at {} (set PALR_MODEL_DIR)",
            dir.display()
        );
        return;
    }
    let text = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smollm2-reference.json"),
    );
    let reference: serde_json::Value = match text {
        Ok(t) => serde_json::from_str(&t).unwrap(),
        Err(_) => {
            eprintln!(
                "skipped: tests/fixtures/smollm2-reference.json not found next to the binary's sources"
            );
            return;
        }
    };
    let gpu = load(&dir, Device::Cuda(ordinal()), 512);
    let cpu = load(&dir, Device::Cpu, 512);
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    for case in reference["logits"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let toks = ids(&case["ids"]);
        let mut gs = gpu.clone().new_session(toks.len()).unwrap();
        let g = gs.feed(&toks, Logits::Last).unwrap().to_vec();
        let mut cs = cpu.clone().new_session(toks.len()).unwrap();
        let c = cs.feed(&toks, Logits::Last).unwrap().to_vec();
        assert_close(
            &format!("{name}: GPU vs CPU (bf16 weights)"),
            &g,
            &c,
            MODEL_TOL,
        );
        let top: Vec<u32> = ids(&case["top20_ids"]);
        let want: Vec<f32> = case["top20_values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let ours: Vec<f32> = top.iter().map(|&i| g[i as usize]).collect();
        assert_close(
            &format!("{name}: GPU top-20 vs reference"),
            &ours,
            &want,
            MODEL_TOL,
        );
        if case["top1_top2_margin"].as_f64().unwrap() > 0.5 {
            let am = g
                .iter()
                .enumerate()
                .fold(0, |b, (i, v)| if *v > g[b] { i } else { b });
            assert_eq!(
                am as u64,
                case["argmax"].as_u64().unwrap(),
                "{name}: argmax"
            );
        }
    }
}

// TODO(rank): when the score-mode ranking module lands on main (the lead is
// writing it), rank a fixed set of requests (history + candidates) with the CPU
// and the CUDA backends and assert the same order of candidates (scores within
// the bf16 bound). Until then this fails if run, so it cannot pass by accident.
#[test]
#[ignore = "TODO(rank): needs the score-mode ranking module (not on main yet)"]
fn score_mode_rankings_match_cpu() {
    unimplemented!("score-mode ranking module not on main yet: see the TODO above");
}

// TODO(service): when the gRPC service lands on main, start it in-process with
// the CUDA backend (`--device cuda:0`), send Rank requests over loopback and
// compare with the CPU service's answers.
#[test]
#[ignore = "TODO(service): needs the gRPC service (not on main yet)"]
fn service_end_to_end_on_cuda() {
    unimplemented!("gRPC service not on main yet: see the TODO above");
}
