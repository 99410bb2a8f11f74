//! LoRA adapters in the PEFT format against PEFT itself (tests/fixtures/lora-peft):
//! merged at load and unmerged per session, both equal to PEFT's merged model.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::*;
use palr::engine::{self, AdapterSpec, LanguageModel, LoadOptions, Logits, WeightDtype};

fn fixture() -> PathBuf {
    repo().join("tests/fixtures/lora-peft")
}

fn reference() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture().join("peft-reference.json")).unwrap())
        .unwrap()
}

fn load(adapters: Vec<AdapterSpec>, dtype: WeightDtype) -> Arc<dyn LanguageModel> {
    engine::load(
        &model_dir(),
        &LoadOptions {
            adapters,
            dtype,
            ..LoadOptions::default()
        },
    )
    .unwrap()
}

fn spec(name: &str, dir: &Path, merge: bool) -> AdapterSpec {
    AdapterSpec {
        name: name.into(),
        dir: dir.to_path_buf(),
        merge,
    }
}

fn rel_err(ours: &[f32], want: &serde_json::Value) -> f64 {
    let ids = ids(&want["top20_ids"]);
    let vals = floats(&want["top20_values"]);
    let num: f64 = ids
        .iter()
        .zip(&vals)
        .map(|(&i, w)| (ours[i as usize] as f64 - w).powi(2))
        .sum();
    (num / vals.iter().map(|w| w * w).sum::<f64>()).sqrt()
}

fn check(model: &Arc<dyn LanguageModel>, adapter: Option<&str>, key: &str, tol: f64) {
    for case in reference()["cases"].as_array().unwrap() {
        let tokens = ids(&case["ids"]);
        let mut s = model.clone().new_session(tokens.len()).unwrap();
        s.set_adapter(adapter).unwrap();
        let logits = s.feed(&tokens, Logits::Last).unwrap();
        let want = &case[key];
        let err = rel_err(logits, want);
        assert!(
            err < tol,
            "{adapter:?} vs PEFT {key}: relative error {err:.2e}"
        );
        assert_eq!(
            argmax(logits) as u64,
            want["argmax"].as_u64().unwrap(),
            "{adapter:?}: argmax"
        );
    }
}

#[test]
fn unmerged_adapter_matches_peft_and_base_stays_base() {
    let model = load(vec![spec("fx", &fixture(), false)], WeightDtype::F32);
    assert_eq!(model.adapters(), ["fx".to_string()]);
    check(&model, Some("fx"), "merged", 1e-3);
    check(&model, Some("fx"), "unmerged", 1e-3);
    // The same model without the adapter is the base model.
    check(&model, None, "base", 1e-3);
    let err = model
        .clone()
        .new_session(4)
        .unwrap()
        .set_adapter(Some("nope"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope") && err.contains("fx"), "{err}");
    // A cache belongs to one adapter.
    let mut s = model.new_session(8).unwrap();
    s.feed(&[1, 2], Logits::None).unwrap();
    assert!(s.set_adapter(Some("fx")).is_err());
}

#[test]
fn merged_adapter_matches_peft() {
    let model = load(vec![spec("fx", &fixture(), true)], WeightDtype::F32);
    assert_eq!(model.merged_adapter(), Some("fx"));
    check(&model, Some("fx"), "merged", 1e-3);
    check(&model, None, "merged", 1e-3);
}

/// bf16 weights round the base (and, merged, the sum): the fixture's adapter moves the
/// logits far (see `adapter_shift_l2`), so ask that the result sits near PEFT's adapted
/// logits and far from the base model's, in both modes.
#[test]
fn adapters_work_with_bf16_weights() {
    let unmerged = load(vec![spec("fx", &fixture(), false)], WeightDtype::Bf16);
    let merged = load(vec![spec("fx", &fixture(), true)], WeightDtype::Bf16);
    for (model, adapter) in [(&unmerged, Some("fx")), (&merged, None)] {
        for case in reference()["cases"].as_array().unwrap() {
            let tokens = ids(&case["ids"]);
            let mut s = model.clone().new_session(tokens.len()).unwrap();
            s.set_adapter(adapter).unwrap();
            let logits = s.feed(&tokens, Logits::Last).unwrap();
            let near = rel_err(logits, &case["merged"]);
            let far = rel_err(logits, &case["base"]);
            eprintln!("bf16 {adapter:?}: vs PEFT adapted {near:.2e}, vs base {far:.2e}");
            assert!(
                near < 0.25 && far > 4.0 * near,
                "bf16 {adapter:?}: {near:.2e} / {far:.2e}"
            );
        }
    }
}

/// Copies the fixture adapter into a temp dir, with `edit` applied to its config and tensors.
fn broken(
    name: &str,
    edit: impl FnOnce(&mut serde_json::Value, &mut Vec<(String, Vec<usize>, Vec<u8>)>),
) -> PathBuf {
    let d = std::env::temp_dir().join(format!("palr-lora-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    let bytes = std::fs::read(fixture().join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.shape().to_vec(), v.data().to_vec()))
        .collect();
    edit(&mut cfg, &mut tensors);
    std::fs::write(d.join("adapter_config.json"), cfg.to_string()).unwrap();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, s.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &d.join("adapter_model.safetensors")).unwrap();
    d
}

#[test]
fn bad_adapters_are_clear_errors() {
    let q_a = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
    let cases: Vec<(PathBuf, &str)> = vec![
        (
            broken("shape", |_, t| {
                let e = t.iter_mut().find(|e| e.0 == q_a).unwrap();
                e.1 = vec![4, 288];
                e.2.truncate(4 * 288 * 2);
            }),
            "do not fit",
        ),
        (
            broken("partner", |_, t| t.retain(|e| e.0 != q_a)),
            "partner",
        ),
        (
            broken("unknown", |_, t| {
                let mut extra = t[0].clone();
                extra.0 = "base_model.model.lm_head.lora_A.weight".into();
                t.push(extra);
            }),
            "lm_head",
        ),
        (broken("dora", |c, _| c["use_dora"] = true.into()), "DoRA"),
        (broken("type", |c, _| c["peft_type"] = "IA3".into()), "IA3"),
        (
            broken("rank", |c, _| c["rank_pattern"] = serde_json::json!({})),
            "r = 4, the weights have r = 2",
        ),
        (
            broken("replication", |c, _| {
                c["layer_replication"] = serde_json::json!([[0, 2]])
            }),
            "layer_replication",
        ),
        (
            std::env::temp_dir().join("palr-no-such-adapter"),
            "adapter_config.json",
        ),
    ];
    for (dir, want) in cases {
        let err = engine::load(
            &model_dir(),
            &LoadOptions {
                adapters: vec![spec("bad", &dir, false)],
                ..LoadOptions::default()
            },
        )
        .err()
        .expect("a broken adapter must not load")
        .to_string();
        assert!(err.contains(want), "{err:?} should mention {want:?}");
    }
    let two_merged = engine::load(
        &model_dir(),
        &LoadOptions {
            adapters: vec![spec("a", &fixture(), true), spec("b", &fixture(), true)],
            ..LoadOptions::default()
        },
    );
    assert!(
        two_merged
            .err()
            .unwrap()
            .to_string()
            .contains("at most one")
    );
}

/// An adapter whose `target_modules` name no LLaMA projection (made for another
/// architecture), or disagree with its weights, is refused when it is opened, not ignored.
#[test]
fn target_modules_must_match_the_weights() {
    let base = palr::model::LlamaConfig::from_dir(&model_dir()).unwrap();
    let with_targets = |targets: serde_json::Value| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            fixture().join("adapter_model.safetensors"),
            dir.path().join("adapter_model.safetensors"),
        )
        .unwrap();
        let mut cfg: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(fixture().join("adapter_config.json")).unwrap(),
        )
        .unwrap();
        cfg["target_modules"] = targets;
        std::fs::write(dir.path().join("adapter_config.json"), cfg.to_string()).unwrap();
        let r = palr::model::lora::Adapter::open("t", dir.path(), &base).map(|_| ());
        r.err().map(|e| e.to_string())
    };
    let e = with_targets(serde_json::json!(["c_attn", "c_proj"])).unwrap();
    assert!(e.contains("match no projection of a LLaMA model"), "{e}");
    let e = with_targets(serde_json::json!(["q_proj"])).unwrap();
    assert!(
        e.contains("target_modules") && e.contains("does not list it"),
        "{e}"
    );
    // The fixture's own list, and "all-linear", open.
    assert_eq!(
        with_targets(serde_json::json!([
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj"
        ])),
        None
    );
    assert_eq!(with_targets(serde_json::json!("all-linear")), None);
}
