//! LoRA adapters in the PEFT format against PEFT itself (tests/fixtures/lora-peft):
//! merged at load and unmerged per session, both equal to PEFT's merged model.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::*;
use palr::engine::{
    self, AdapterRef, AdapterSpec, EngineError, LanguageModel, LoadOptions, Logits, WeightDtype,
};

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

/// `name`'s adapter pinned (None for the base model and for the adapter merged into it).
fn pin(model: &Arc<dyn LanguageModel>, name: Option<&str>) -> Option<AdapterRef> {
    name.filter(|n| model.merged_adapter() != Some(*n))
        .map(|n| model.adapter(n).unwrap())
}

fn check(model: &Arc<dyn LanguageModel>, adapter: Option<&str>, key: &str, tol: f64) {
    let pinned = pin(model, adapter);
    for case in reference()["cases"].as_array().unwrap() {
        let tokens = ids(&case["ids"]);
        let mut s = model.clone().new_session(tokens.len()).unwrap();
        s.set_adapter(pinned.as_ref()).unwrap();
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
    let names: Vec<String> = model
        .adapters()
        .iter()
        .map(|a| a.name().to_owned())
        .collect();
    assert_eq!(names, ["fx"]);
    check(&model, Some("fx"), "merged", 1e-3);
    check(&model, Some("fx"), "unmerged", 1e-3);
    // The same model without the adapter is the base model.
    check(&model, None, "base", 1e-3);
    let err = model.adapter("nope").unwrap_err().to_string();
    assert!(err.contains("nope") && err.contains("fx"), "{err}");
    // A cache belongs to one adapter.
    let fx = model.adapter("fx").unwrap();
    let mut s = model.clone().new_session(8).unwrap();
    s.feed(&[1, 2], Logits::None).unwrap();
    assert!(s.set_adapter(Some(&fx)).is_err());
    // An adapter of another model is refused, even one of the same shapes.
    let other = load(vec![spec("fx", &fixture(), false)], WeightDtype::F32);
    let mut s = model.new_session(8).unwrap();
    let err = s
        .set_adapter(Some(&other.adapter("fx").unwrap()))
        .unwrap_err();
    assert!(err.to_string().contains("another model"), "{err}");
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
        let pinned = pin(model, adapter);
        for case in reference()["cases"].as_array().unwrap() {
            let tokens = ids(&case["ids"]);
            let mut s = model.clone().new_session(tokens.len()).unwrap();
            s.set_adapter(pinned.as_ref()).unwrap();
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

/// The logits of each reference case on `s` (emptied first) and whether they are PEFT's
/// adapted ones (else the base model's), within `tol`.
fn adapted(model: &Arc<dyn LanguageModel>, adapter: Option<&AdapterRef>) -> Vec<bool> {
    reference()["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|case| {
            let tokens = ids(&case["ids"]);
            let mut s = model.clone().new_session(tokens.len()).unwrap();
            s.set_adapter(adapter).unwrap();
            let logits = s.feed(&tokens, Logits::Last).unwrap();
            let (near, base) = (
                rel_err(logits, &case["merged"]),
                rel_err(logits, &case["base"]),
            );
            assert!(
                near < 1e-3 || base < 1e-3,
                "neither: {near:.2e} / {base:.2e}"
            );
            near < 1e-3
        })
        .collect()
}

/// Adapters come and go while the model serves (the admin API's LoadAdapter and
/// UnloadAdapter): one loaded later equals one loaded at start (PEFT's logits); a session
/// pinned to it keeps running on it through an unload and a replacement, and its weights
/// go with the last pin; names are unique unless replaced; a bad directory changes nothing.
#[test]
fn adapters_load_and_unload_while_the_model_serves() {
    let model = load(Vec::new(), WeightDtype::F32);
    assert!(model.adapters().is_empty());
    // A session made before any adapter existed (its LoRA scratch grows on demand).
    let mut early = model.clone().new_session(64).unwrap();
    let (fx, replaced) = model.load_adapter("fx", &fixture(), false).unwrap();
    assert!(replaced.is_none());
    assert_eq!(fx.info().rank, 4);
    // layers_to_transform = [0, 1, 14, 28, 29], all seven projections of each.
    assert_eq!(fx.info().projections, 5 * 7);
    check(&model, Some("fx"), "unmerged", 1e-3);
    early.set_adapter(Some(&fx)).unwrap();
    let case = &reference()["cases"][0];
    let tokens = ids(&case["ids"]);
    let before = early.feed(&tokens, Logits::Last).unwrap().to_vec();
    assert!(rel_err(&before, &case["merged"]) < 1e-3);

    // The name is taken; a broken directory fails and leaves the table as it was.
    let e = model.load_adapter("fx", &fixture(), false).unwrap_err();
    assert!(matches!(e, EngineError::AdapterExists(_)), "{e}");
    let bad = broken("live", |c, _| c["use_dora"] = true.into());
    assert!(model.load_adapter("fx", &bad, true).is_err());
    assert!(model.load_adapter("other", &bad, false).is_err());
    assert_eq!(model.adapter("fx").unwrap().generation(), fx.generation());
    assert_eq!(model.adapters().len(), 1);

    // Unloaded: no new pin, but the pinned session runs on (same logits as before).
    let pins = fx.pins();
    let gone = model.unload_adapter("fx").unwrap();
    assert_eq!(gone.generation(), fx.generation());
    drop(gone);
    assert_eq!(fx.pins(), pins - 1, "the table let go of it");
    assert!(matches!(
        model.adapter("fx"),
        Err(EngineError::UnknownAdapter { .. })
    ));
    assert!(matches!(
        model.unload_adapter("fx"),
        Err(EngineError::UnknownAdapter { .. })
    ));
    early.truncate(0).unwrap();
    let after = early.feed(&tokens, Logits::Last).unwrap().to_vec();
    assert_eq!(before, after);
    early.truncate(0).unwrap();
    early.set_adapter(None).unwrap();
    assert_eq!(fx.pins(), 1, "only this test's pin is left");

    // Loaded again: a new generation; replaced: the old pin keeps the old weights.
    let (fx2, _) = model.load_adapter("fx", &fixture(), false).unwrap();
    assert!(fx2.generation() > fx.generation());
    let other = broken("scaled", |c, _| {
        c["lora_alpha"] = 0.into();
        c["alpha_pattern"] = serde_json::json!({});
    });
    let (zero, old) = model.load_adapter("fx", &other, true).unwrap();
    assert_eq!(old.unwrap().generation(), fx2.generation());
    assert!(zero.generation() > fx2.generation());
    assert_eq!(model.adapters().len(), 1);
    // Read whole at load: the files may go (or be rewritten) afterwards.
    let copy = broken("deleted", |_, _| {});
    let (gone_files, _) = model.load_adapter("copy", &copy, false).unwrap();
    std::fs::remove_dir_all(&copy).unwrap();
    let n = reference()["cases"].as_array().unwrap().len();
    assert_eq!(adapted(&model, Some(&gone_files)), vec![true; n]);
    model.unload_adapter("copy").unwrap();
    // alpha = 0 scales the update to nothing: the base model's logits.
    assert_eq!(adapted(&model, Some(&zero)), vec![false; n]);
    assert_eq!(adapted(&model, Some(&fx2)), vec![true; n]);
    assert_eq!(
        adapted(&model, Some(&model.adapter("fx").unwrap())),
        vec![false; n]
    );
}

/// `max_adapter_rank` bounds adapters at start-up and when loaded later (the fixture has rank
/// 4): over it, the load is refused before any weight is read and the table is unchanged.
#[test]
fn adapter_rank_is_bounded() {
    let opts = |max| LoadOptions {
        adapters: vec![spec("fx", &fixture(), false)],
        max_adapter_rank: max,
        ..LoadOptions::default()
    };
    let e = engine::load(&model_dir(), &opts(3))
        .err()
        .expect("rank 4 over 3");
    assert!(
        matches!(&e, EngineError::AdapterRank { name, rank: 4, max: 3 } if name == "fx"),
        "{e}"
    );
    let model = engine::load(&model_dir(), &opts(4)).unwrap();
    let model_3 = engine::load(
        &model_dir(),
        &LoadOptions {
            max_adapter_rank: 3,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let e = model_3.load_adapter("fx", &fixture(), false).unwrap_err();
    assert!(matches!(e, EngineError::AdapterRank { .. }), "{e}");
    assert!(model_3.adapters().is_empty());
    assert_eq!(model.adapters().len(), 1);
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
