//! The imported default model (SmolLM2-135M-Instruct from its Q4_1 GGUF) against the
//! reference in `tests/fixtures/smollm2-reference.json`. Needs `palr model fetch` first.

use std::path::{Path, PathBuf};

use palr::gguf::fetch;
use serde_json::Value;

fn fixture() -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smollm2-reference.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn model_dir() -> PathBuf {
    fetch::require_default_model_dir().unwrap_or_else(|e| panic!("{e}"))
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn config_matches_reference() {
    let fx = fixture();
    let want = &fx["config"];
    let got = read_json(&model_dir().join("config.json"));
    for key in [
        "architectures",
        "model_type",
        "hidden_size",
        "intermediate_size",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "num_hidden_layers",
        "rms_norm_eps",
        "rope_theta",
        "rope_parameters",
        "max_position_embeddings",
        "vocab_size",
        "tie_word_embeddings",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
        "unk_token_id",
        "hidden_act",
        "attention_bias",
        "mlp_bias",
        "dtype",
    ] {
        assert_eq!(got[key], want[key], "config.json field {key}");
    }
    let gen_want = &fx["generation_config"];
    let gen_got = read_json(&model_dir().join("generation_config.json"));
    for key in ["bos_token_id", "eos_token_id", "pad_token_id"] {
        assert_eq!(
            gen_got[key], gen_want[key],
            "generation_config.json field {key}"
        );
    }
}

#[test]
fn tokenizer_config_matches_reference() {
    let fx = fixture();
    let cfg = read_json(&model_dir().join("tokenizer_config.json"));
    for (key, field) in [
        ("bos_token", "bos_token"),
        ("eos_token", "eos_token"),
        ("pad_token", "pad_token"),
        ("unk_token", "unk_token"),
    ] {
        assert_eq!(cfg[key], fx["special_tokens"][field]["token"], "{key}");
    }
    assert_eq!(cfg["chat_template"], fx["chat_template"]["template"]);
    assert_eq!(cfg["add_bos_token"], false);
    let decoder = cfg["added_tokens_decoder"].as_object().unwrap();
    for (content, id) in fx["special_tokens"]["added_tokens"].as_object().unwrap() {
        let entry = &decoder[&id.to_string()];
        assert_eq!(entry["content"], content.as_str());
        assert_eq!(entry["special"], true);
    }
}

/// The reference's `model.safetensors` was written by `transformers` after loading the same
/// GGUF (its own dequantization and Q/K un-permutation). Ours is byte-identical: same names,
/// shapes, dtype, header and every weight bit.
#[test]
fn weights_are_byte_identical_to_reference_import() {
    let fx = fixture();
    let dir = model_dir();
    assert!(
        fetch::is_imported(&dir),
        "{} is not an f32 import of the default GGUF; run `palr model fetch`",
        dir.display()
    );
    let got = fetch::file_sha256(&dir.join("model.safetensors")).unwrap();
    assert_eq!(
        got,
        fx["meta"]["model_safetensors_sha256"].as_str().unwrap()
    );
}

#[test]
fn safetensors_layout_is_hugging_face() {
    let dir = model_dir();
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let shape = |n: &str| {
        st.tensor(n)
            .unwrap_or_else(|e| panic!("{n}: {e}"))
            .shape()
            .to_vec()
    };
    assert_eq!(st.len(), 2 + 30 * 9, "no lm_head: embeddings are tied");
    assert_eq!(shape("model.embed_tokens.weight"), [49152, 576]);
    assert_eq!(shape("model.norm.weight"), [576]);
    for i in [0, 29] {
        let l = |s: &str| format!("model.layers.{i}.{s}.weight");
        assert_eq!(shape(&l("self_attn.q_proj")), [576, 576]);
        assert_eq!(shape(&l("self_attn.k_proj")), [192, 576]);
        assert_eq!(shape(&l("self_attn.v_proj")), [192, 576]);
        assert_eq!(shape(&l("self_attn.o_proj")), [576, 576]);
        assert_eq!(shape(&l("mlp.gate_proj")), [1536, 576]);
        assert_eq!(shape(&l("mlp.up_proj")), [1536, 576]);
        assert_eq!(shape(&l("mlp.down_proj")), [576, 1536]);
        assert_eq!(shape(&l("input_layernorm")), [576]);
        assert_eq!(shape(&l("post_attention_layernorm")), [576]);
    }
    assert!(st.tensor("lm_head.weight").is_err());
}

/// Re-imports the cached GGUF as bf16: every value is the f32 import rounded to bf16.
#[test]
fn bf16_import_is_rounded_f32_import() {
    let gguf = fetch::default_gguf_path();
    assert!(
        gguf.is_file(),
        "{} is missing; run `palr model fetch` (or set {})",
        gguf.display(),
        fetch::GGUF_PATH_ENV
    );
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("bf16");
    palr::gguf::import::import_gguf(
        &gguf,
        &out,
        &palr::gguf::import::ImportOptions {
            dtype: palr::gguf::import::OutDtype::Bf16,
            force: false,
        },
    )
    .unwrap();
    assert_eq!(read_json(&out.join("config.json"))["dtype"], "bfloat16");
    let f32_bytes = std::fs::read(model_dir().join("model.safetensors")).unwrap();
    let bf_bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let a = safetensors::SafeTensors::deserialize(&f32_bytes).unwrap();
    let b = safetensors::SafeTensors::deserialize(&bf_bytes).unwrap();
    assert_eq!(a.len(), b.len());
    for name in [
        "model.layers.3.self_attn.q_proj.weight",
        "model.layers.3.self_attn.k_proj.weight",
        "model.norm.weight",
    ] {
        let ta = a.tensor(name).unwrap();
        let tb = b.tensor(name).unwrap();
        assert_eq!(tb.dtype(), safetensors::Dtype::BF16);
        assert_eq!(ta.shape(), tb.shape());
        for (x, y) in ta.data().chunks_exact(4).zip(tb.data().chunks_exact(2)) {
            let x = f32::from_le_bytes(x.try_into().unwrap());
            let y = half::bf16::from_le_bytes(y.try_into().unwrap());
            assert_eq!(half::bf16::from_f32(x).to_bits(), y.to_bits(), "{name}");
        }
    }
}
