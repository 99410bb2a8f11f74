//! The engine's command line as people and other tools call it: `palr generate`,
//! `palr logits`, `palr tokenize` and `palr bench engine`, on the default model.

mod common;

use std::process::Command;

use common::*;

fn palr(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_palr"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn generate_chat_answers_coherently() {
    let dir = model_dir();
    let (ok, out, err) = palr(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--chat",
        "--prompt",
        "What is the capital of France?",
        "--max-tokens",
        "24",
    ]);
    assert!(ok, "{err}");
    // The reference's greedy continuation of this chat (fixture `greedy.chat_capital`).
    assert!(
        out.starts_with("The capital of France is Paris."),
        "{out:?}"
    );
    assert!(
        !out.contains("<|im_end|>"),
        "generation stops at EOS: {out:?}"
    );
}

#[test]
fn generate_sampling_is_seeded_and_stops_on_stop_strings() {
    let dir = model_dir();
    let run = |seed: &str| {
        palr(&[
            "generate",
            "--model",
            dir.to_str().unwrap(),
            "--prompt",
            "Once upon a time",
            "--max-tokens",
            "16",
            "--temperature",
            "0.9",
            "--top-p",
            "0.95",
            "--top-k",
            "50",
            "--seed",
            seed,
        ])
    };
    let (ok, a, err) = run("7");
    assert!(ok, "{err}");
    assert_eq!(run("7").1, a, "same seed, same text");
    let (ok, out, err) = palr(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--chat",
        "--prompt",
        "What is the capital of France?",
        "--stop",
        "Paris",
    ]);
    assert!(ok, "{err}");
    assert_eq!(
        out.trim_end(),
        "The capital of France is",
        "stops before the stop string"
    );
}

#[test]
fn logits_prints_the_reference_top_tokens_as_json() {
    let reference = reference();
    let case = &reference["logits"][0];
    let dir = model_dir();
    let (ok, out, err) = palr(&[
        "logits",
        "--model",
        dir.to_str().unwrap(),
        "--prompt",
        case["text"].as_str().unwrap(),
        "--top",
        "5",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(ids(&v["tokens"]), ids(&case["ids"]));
    let top = v["top"].as_array().unwrap();
    assert_eq!(top.len(), 5);
    let want_ids = ids(&case["top20_ids"]);
    let want_vals = floats(&case["top20_values"]);
    for (i, pair) in top.iter().enumerate() {
        assert_eq!(pair[0].as_u64().unwrap() as u32, want_ids[i]);
        assert!((pair[1].as_f64().unwrap() - want_vals[i]).abs() < 1e-3);
    }
    // Special-token text becomes its id; --bos prepends BOS.
    let (ok, out, _) = palr(&[
        "logits",
        "--model",
        dir.to_str().unwrap(),
        "--prompt",
        "<|im_start|>user",
        "--bos",
        "--top",
        "1",
    ]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(ids(&v["tokens"])[..2], [1, 1]);
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let dir = model_dir();
    let (ok, _, err) = palr(&["logits", "--model", "/nonexistent", "--prompt", "x"]);
    assert!(!ok && err.contains("/nonexistent"), "{err}");
    let (ok, _, err) = palr(&["logits", "--model", dir.to_str().unwrap(), "--prompt", ""]);
    assert!(!ok && err.contains("tokenizes to nothing"), "{err}");
    let (ok, _, err) = palr(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--prompt",
        "x",
        "--top-p",
        "0",
    ]);
    assert!(!ok && err.contains("top_p"), "{err}");
    assert!(!err.contains("panicked"));
}

#[test]
fn bench_engine_reports_json() {
    let dir = model_dir();
    let (ok, out, err) = palr(&[
        "bench",
        "engine",
        "--model",
        dir.to_str().unwrap(),
        "--prompt-tokens",
        "32",
        "--decode-tokens",
        "4",
        "--runs",
        "1",
        "--warmup",
        "0",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(v["prefill_tok_s"].as_f64().unwrap() > 0.0);
    assert!(v["decode_tok_s"].as_f64().unwrap() > 0.0);
    assert!(v["peak_rss_mib"].as_f64().unwrap() > 100.0);
}
