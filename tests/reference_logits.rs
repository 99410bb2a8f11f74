//! The engine against the reference implementation (Hugging Face transformers,
//! float32, eager attention) on SmolLM2-135M-Instruct: last-position logits,
//! per-position top-5 and greedy continuations. See tests/fixtures/README.md.

mod common;

use std::sync::Arc;

use common::*;
use palr::engine::{self, LanguageModel, LoadOptions, Logits, WeightDtype};

fn load(dtype: WeightDtype) -> Arc<dyn LanguageModel> {
    let opts = LoadOptions {
        dtype,
        ..LoadOptions::default()
    };
    engine::load(&model_dir(), &opts).expect("load model")
}

/// Relative L2 error of our logits at the reference's top-20 ids.
fn top20_rel_err(ours: &[f32], case: &serde_json::Value) -> f64 {
    let ids = ids(&case["top20_ids"]);
    let want = floats(&case["top20_values"]);
    let num: f64 = ids
        .iter()
        .zip(&want)
        .map(|(&i, w)| (ours[i as usize] as f64 - w).powi(2))
        .sum();
    let den: f64 = want.iter().map(|w| w * w).sum();
    (num / den).sqrt()
}

#[test]
fn last_position_logits_match_reference() {
    let reference = reference();
    let model = load(WeightDtype::F32);
    for case in reference["logits"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let tokens = ids(&case["ids"]);
        let mut s = model.clone().new_session(tokens.len()).unwrap();
        let logits = s.feed(&tokens, Logits::Last).unwrap();
        let err = top20_rel_err(logits, case);
        assert!(err < 1e-3, "{name}: top-20 relative L2 error {err:.2e}");
        assert_eq!(
            argmax(logits),
            case["argmax"].as_u64().unwrap() as usize,
            "{name}: argmax"
        );
        let mean = logits.iter().map(|&v| v as f64).sum::<f64>() / logits.len() as f64;
        let l2 = logits
            .iter()
            .map(|&v| (v as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        let (want_mean, want_l2) = (
            case["mean"].as_f64().unwrap(),
            case["l2_norm"].as_f64().unwrap(),
        );
        assert!(
            (l2 - want_l2).abs() < 1e-3 * want_l2,
            "{name}: |logits| {l2} vs {want_l2}"
        );
        assert!(
            (mean - want_mean).abs() < 1e-2,
            "{name}: mean {mean} vs {want_mean}"
        );
        eprintln!("{name}: {} tokens, top-20 rel err {err:.2e}", tokens.len());
    }
}

#[test]
fn chunked_prefill_and_token_by_token_agree_with_one_pass() {
    let reference = reference();
    let case = &reference["logits"].as_array().unwrap()[4]; // long_plain_400
    let tokens = ids(&case["ids"]);
    let small = engine::load(
        &model_dir(),
        &LoadOptions {
            max_batch_rows: 37, // odd chunk size: chunks end mid-way through everything
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let mut s = small.clone().new_session(tokens.len()).unwrap();
    let err = top20_rel_err(s.feed(&tokens, Logits::Last).unwrap(), case);
    assert!(err < 1e-3, "chunked prefill: {err:.2e}");
    // The last 20 tokens one by one on top of a prefix.
    let split = tokens.len() - 20;
    let mut s = small.new_session(tokens.len()).unwrap();
    s.feed(&tokens[..split], Logits::None).unwrap();
    let mut last = Vec::new();
    for &t in &tokens[split..] {
        last = s.feed(&[t], Logits::Last).unwrap().to_vec();
    }
    let err = top20_rel_err(&last, case);
    assert!(err < 1e-3, "token by token: {err:.2e}");
}

#[test]
fn per_position_top5_match_reference() {
    let reference = reference();
    let case = &reference["per_position_top5"];
    let tokens = ids(&case["ids"]);
    let model = load(WeightDtype::F32);
    let mut s = model.new_session(tokens.len()).unwrap();
    let vocab = s.vocab_size();
    let all = s.feed(&tokens, Logits::All).unwrap().to_vec();
    let want_ids = case["top5_ids"].as_array().unwrap();
    let want_vals = case["top5_values"].as_array().unwrap();
    assert_eq!(want_ids.len(), tokens.len());
    let mut worst = 0f64;
    for (pos, (wi, wv)) in want_ids.iter().zip(want_vals).enumerate() {
        let row = &all[pos * vocab..(pos + 1) * vocab];
        let (wi, wv) = (ids(wi), floats(wv));
        for (&id, &v) in wi.iter().zip(&wv) {
            let d = (row[id as usize] as f64 - v).abs();
            worst = worst.max(d);
            assert!(
                d < 2e-3 * (1.0 + v.abs()),
                "position {pos}: logit of {id} is {} vs {v}",
                row[id as usize]
            );
        }
        // Our top-5 is the reference's, up to the order of near-equal values.
        let mut ours: Vec<usize> = (0..vocab).collect();
        ours.select_nth_unstable_by(4, |&a, &b| row[b].total_cmp(&row[a]));
        let ours_min = ours[..5]
            .iter()
            .map(|&i| row[i])
            .fold(f32::INFINITY, f32::min) as f64;
        for &i in &ours[..5] {
            let near_boundary = (row[i] as f64 - wv[4]).abs() < 2e-3;
            assert!(
                wi.contains(&(i as u32)) || near_boundary,
                "position {pos}: {i} in our top-5 only"
            );
        }
        assert!(
            (ours_min - wv[4]).abs() < 2e-3 * (1.0 + wv[4].abs()),
            "position {pos}: 5th value"
        );
    }
    eprintln!("per-position top-5: worst abs diff {worst:.2e}");
}

fn greedy(model: &Arc<dyn LanguageModel>, prompt: &[u32], steps: usize) -> Vec<u32> {
    let mut s = model.clone().new_session(prompt.len() + steps).unwrap();
    let mut next = argmax(s.feed(prompt, Logits::Last).unwrap()) as u32;
    let mut out = vec![next];
    while out.len() < steps {
        next = argmax(s.feed(&[next], Logits::Last).unwrap()) as u32;
        out.push(next);
    }
    out
}

#[test]
fn greedy_continuations_match_reference() {
    let reference = reference();
    let model = load(WeightDtype::F32);
    for case in reference["greedy"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let want = ids(&case["continuation_ids"]);
        let got = greedy(&model, &ids(&case["prompt_ids"]), want.len());
        assert_eq!(got, want, "{name}: greedy continuation");
    }
}

#[test]
fn bf16_weights_stay_close_to_reference() {
    // bf16 storage rounds every weight (~3 significant digits), and where the CPU has bf16
    // dot products (AMX, AVX512-BF16) the projections' inputs are rounded too: expect the
    // same argmax on confident prompts and a small, bounded error, not bit-equality.
    let reference = reference();
    let model = load(WeightDtype::Bf16);
    eprintln!("backend: {}", model.describe());
    for case in reference["logits"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let tokens = ids(&case["ids"]);
        let mut s = model.clone().new_session(tokens.len()).unwrap();
        let logits = s.feed(&tokens, Logits::Last).unwrap();
        let err = top20_rel_err(logits, case);
        assert!(
            err < 3e-2,
            "{name}: bf16 top-20 relative L2 error {err:.2e}"
        );
        if case["top1_top2_margin"].as_f64().unwrap() > 0.5 {
            assert_eq!(
                argmax(logits),
                case["argmax"].as_u64().unwrap() as usize,
                "{name}: bf16 argmax"
            );
        }
        eprintln!("{name}: bf16 top-20 rel err {err:.2e}");
    }
    // Every position of the long prompts (a prefill of hundreds of rows: the AMX path),
    // against the f32 engine: the predicted next token agrees almost everywhere.
    let f32_model = load(WeightDtype::F32);
    for case in reference["logits"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let tokens = ids(&case["ids"]);
        if tokens.len() < 100 {
            continue;
        }
        let all = |m: &Arc<dyn LanguageModel>| {
            let mut s = m.clone().new_session(tokens.len()).unwrap();
            s.feed(&tokens, Logits::All).unwrap().to_vec()
        };
        let (b, f) = (all(&model), all(&f32_model));
        let vocab = b.len() / tokens.len();
        let agree = b
            .chunks(vocab)
            .zip(f.chunks(vocab))
            .filter(|(b, f)| argmax(b) == argmax(f))
            .count();
        let rate = agree as f64 / tokens.len() as f64;
        eprintln!(
            "{name}: bf16 and f32 agree on the next token at {agree} of {} positions",
            tokens.len()
        );
        assert!(
            rate >= 0.95,
            "{name}: bf16 top-1 agrees with f32 at only {rate:.3} of positions"
        );
    }
}

/// [`bf16_weights_stay_close_to_reference`] once per CPU path this machine has, each in
/// a child process with `PALR_CPU_ISA` capping the kernels (the choice is made once per
/// process); a path the CPU lacks is named as skipped, not passed.
#[test]
fn bf16_every_cpu_path_stays_close_to_reference() {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let has = |flag: &str| cpu.split_whitespace().any(|w| w == flag);
    // (PALR_CPU_ISA, what the backend description must say, CPU flags the path needs)
    let paths: [(&str, &str, &[&str]); 4] = [
        (
            "amx",
            "amx bf16 products",
            &["amx_bf16", "amx_tile", "avx512_bf16"],
        ),
        (
            "avx512bf16",
            "avx512bf16 bf16 products",
            &["avx512_bf16", "avx512bw"],
        ),
        ("avx512", "Avx512", &["avx512f", "avx512bw"]),
        ("avx2", "Avx2", &["avx2", "fma"]),
    ];
    let exe = std::env::current_exe().unwrap();
    let mut ran = Vec::new();
    for (isa, expect, flags) in paths {
        if let Some(missing) = flags.iter().find(|f| !has(f)) {
            eprintln!("bf16 path {isa} SKIPPED: this CPU lacks {missing}");
            continue;
        }
        let out = std::process::Command::new(&exe)
            .args([
                "--exact",
                "bf16_weights_stay_close_to_reference",
                "--nocapture",
            ])
            .env("PALR_CPU_ISA", isa)
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "bf16 path {isa} failed:\n{log}");
        let backend = log
            .lines()
            .find(|l| l.starts_with("backend: "))
            .unwrap_or("");
        if isa == "amx" && backend.contains("avx512bf16 bf16 products") {
            // The CPU has AMX but Linux did not grant this process the tile data (an old
            // kernel, a seccomp filter): palr falls back to AVX512-BF16, tested next.
            eprintln!("bf16 path amx SKIPPED: the CPU has AMX but the OS refused tile data");
            continue;
        }
        assert!(
            backend.contains(expect) && (isa == "amx" || !backend.contains("amx")),
            "PALR_CPU_ISA={isa} ran on {backend:?}, expected {expect:?}"
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("1 passed"),
            "PALR_CPU_ISA={isa}: the child ran no test:\n{stdout}"
        );
        eprintln!("bf16 path {isa}: passed on {backend}");
        ran.push(isa);
    }
    assert!(!ran.is_empty(), "no CPU path could run");
}
