//! GGUF -> Hugging Face import on a tiny synthetic llama model built in the test (no
//! downloaded model needed): config, tensor names/shapes/values, the Q/K un-permutation,
//! tied and untied heads, bf16, the tokenizer, error cases and atomic output.

use std::path::{Path, PathBuf};

use palr::gguf::import::{ImportError, ImportOptions, OutDtype, import_gguf, permute_qk_rows};
use palr::gguf::writer::{GgufWriter, i32_array, string_array};
use palr::gguf::{GgmlType, Value};
use serde_json::Value as Json;

const E: u64 = 32; // hidden size
const HEADS: u64 = 4;
const KV: u64 = 2;
const HD: u64 = 8;
const FF: u64 = 64;
const LAYERS: u64 = 2;

const CHATML: &str = "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n'}}{% endfor %}";

/// Deterministic values exactly representable in f16 and as 0.5 * i8.
fn values(seed: usize, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((i * 7 + seed * 13) % 23) as f32 - 11.0) * 0.5)
        .collect()
}

fn q8_0(vals: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    for blk in vals.chunks(32) {
        out.extend(half::f16::from_f32(0.5).to_le_bytes());
        out.extend(blk.iter().map(|&v| ((v / 0.5) as i8) as u8));
    }
    out
}

struct Tensor {
    name: String,
    dims: Vec<u64>,
    ty: GgmlType,
    data: Vec<u8>,
    /// Dequantized values in GGUF row order.
    values: Vec<f32>,
}

struct Tiny {
    meta: Vec<(String, Value)>,
    tensors: Vec<Tensor>,
}

fn vocab() -> (Vec<String>, Vec<i32>, Vec<String>) {
    let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        .map(String::from)
        .to_vec();
    let mut types = vec![3; 3];
    for c in palr::tokenizer::byte_to_char_table() {
        tokens.push(c.to_string());
        types.push(1);
    }
    for t in ["Ġt", "he", "Ġthe", "12"] {
        tokens.push(t.into());
        types.push(1);
    }
    tokens.push("<user>".into());
    types.push(4);
    // "1 2" exists so that only the digit-splitting pre-tokenizer keeps "12" apart.
    let merges = ["Ġ t", "h e", "Ġt he", "1 2"].map(String::from).to_vec();
    (tokens, types, merges)
}

impl Tiny {
    fn new() -> Self {
        let (tokens, types, merges) = vocab();
        let n_vocab = tokens.len() as u64;
        let s = |v: &str| Value::String(v.into());
        let meta = vec![
            ("general.architecture".into(), s("llama")),
            ("general.name".into(), s("tiny")),
            ("llama.block_count".into(), Value::U32(LAYERS as u32)),
            ("llama.context_length".into(), Value::U32(128)),
            ("llama.embedding_length".into(), Value::U32(E as u32)),
            ("llama.feed_forward_length".into(), Value::U32(FF as u32)),
            (
                "llama.attention.head_count".into(),
                Value::U32(HEADS as u32),
            ),
            (
                "llama.attention.head_count_kv".into(),
                Value::U32(KV as u32),
            ),
            ("llama.rope.freq_base".into(), Value::F32(10000.0)),
            ("llama.rope.dimension_count".into(), Value::U32(HD as u32)),
            (
                "llama.attention.layer_norm_rms_epsilon".into(),
                Value::F32(1e-6),
            ),
            ("tokenizer.ggml.model".into(), s("gpt2")),
            ("tokenizer.ggml.pre".into(), s("smollm")),
            ("tokenizer.ggml.tokens".into(), string_array(&tokens)),
            ("tokenizer.ggml.token_type".into(), i32_array(types)),
            ("tokenizer.ggml.merges".into(), string_array(&merges)),
            ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
            // Deliberately the base model's <|endoftext|>: the ChatML rule must pick <|im_end|>.
            ("tokenizer.ggml.eos_token_id".into(), Value::U32(0)),
            ("tokenizer.ggml.unknown_token_id".into(), Value::U32(0)),
            ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
            ("tokenizer.chat_template".into(), s(CHATML)),
        ];
        let mut t = Tiny {
            meta,
            tensors: Vec::new(),
        };
        let mut seed = 0;
        let mut add = |t: &mut Tiny, name: String, dims: &[u64], ty: GgmlType| {
            seed += 1;
            let n: u64 = dims.iter().product();
            let vals = values(seed, n as usize);
            let data = match ty {
                GgmlType::F32 => vals.iter().flat_map(|v| v.to_le_bytes()).collect(),
                GgmlType::F16 => vals
                    .iter()
                    .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                    .collect(),
                GgmlType::Q8_0 => q8_0(&vals),
                _ => unreachable!(),
            };
            t.tensors.push(Tensor {
                name,
                dims: dims.to_vec(),
                ty,
                data,
                values: vals,
            });
        };
        add(
            &mut t,
            "token_embd.weight".into(),
            &[E, n_vocab],
            GgmlType::Q8_0,
        );
        for i in 0..LAYERS {
            let g = |s: &str| format!("blk.{i}.{s}.weight");
            add(&mut t, g("attn_norm"), &[E], GgmlType::F32);
            add(&mut t, g("attn_q"), &[E, HEADS * HD], GgmlType::F16);
            add(&mut t, g("attn_k"), &[E, KV * HD], GgmlType::Q8_0);
            add(&mut t, g("attn_v"), &[E, KV * HD], GgmlType::F32);
            add(&mut t, g("attn_output"), &[HEADS * HD, E], GgmlType::F32);
            add(&mut t, g("ffn_norm"), &[E], GgmlType::F32);
            add(&mut t, g("ffn_gate"), &[E, FF], GgmlType::Q8_0);
            add(&mut t, g("ffn_up"), &[E, FF], GgmlType::F16);
            add(&mut t, g("ffn_down"), &[FF, E], GgmlType::F32);
        }
        add(&mut t, "output_norm.weight".into(), &[E], GgmlType::F32);
        t
    }

    fn set(&mut self, key: &str, v: Value) -> &mut Self {
        self.meta.retain(|(k, _)| k != key);
        self.meta.push((key.into(), v));
        self
    }

    fn remove_tensor(&mut self, name: &str) -> &mut Self {
        self.tensors.retain(|t| t.name != name);
        self
    }

    fn tensor(&self, name: &str) -> &Tensor {
        self.tensors.iter().find(|t| t.name == name).unwrap()
    }

    fn write(&self, dir: &Path) -> PathBuf {
        let mut w = GgufWriter::new();
        for (k, v) in &self.meta {
            w.add(k, v.clone());
        }
        for t in &self.tensors {
            w.add_tensor(&t.name, &t.dims, t.ty, t.data.clone());
        }
        let p = dir.join("tiny.gguf");
        w.write(&p).unwrap();
        p
    }
}

fn read_json(p: &Path) -> Json {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn f32_tensor(st: &safetensors::SafeTensors<'_>, name: &str) -> (Vec<usize>, Vec<f32>) {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(t.dtype(), safetensors::Dtype::F32);
    let v = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (t.shape().to_vec(), v)
}

/// Files left in `dir` other than `keep` (detects half-written output).
fn leftovers(dir: &Path, keep: &[&str]) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !keep.contains(&n.as_str()))
        .collect()
}

#[test]
fn imports_tiny_llama() {
    let tmp = tempfile::tempdir().unwrap();
    let tiny = Tiny::new();
    let src = tiny.write(tmp.path());
    let out = tmp.path().join("hf");
    let summary = import_gguf(&src, &out, &ImportOptions::default()).unwrap();
    assert_eq!(summary.n_tensors as u64, 2 + 9 * LAYERS);
    assert!(summary.tie_word_embeddings);
    assert!(
        summary.warnings.iter().any(|w| w.contains("<|im_end|>")),
        "{:?}",
        summary.warnings
    );
    assert_eq!(
        leftovers(tmp.path(), &["tiny.gguf", "hf"]),
        Vec::<String>::new()
    );

    let cfg = read_json(&out.join("config.json"));
    assert_eq!(cfg["architectures"][0], "LlamaForCausalLM");
    assert_eq!(cfg["hidden_size"], E);
    assert_eq!(cfg["intermediate_size"], FF);
    assert_eq!(cfg["num_attention_heads"], HEADS);
    assert_eq!(cfg["num_key_value_heads"], KV);
    assert_eq!(cfg["head_dim"], HD);
    assert_eq!(cfg["num_hidden_layers"], LAYERS);
    assert_eq!(cfg["max_position_embeddings"], 128);
    assert_eq!(cfg["vocab_size"], 264);
    assert_eq!(cfg["rms_norm_eps"], f64::from(1e-6f32));
    assert_eq!(cfg["rope_theta"], 10000.0);
    assert_eq!(cfg["tie_word_embeddings"], true);
    assert_eq!(cfg["bos_token_id"], 1);
    assert_eq!(cfg["eos_token_id"], 2, "ChatML template: eos is <|im_end|>");
    assert_eq!(cfg["pad_token_id"], 2, "no padding id: pad = eos");
    assert_eq!(cfg["unk_token_id"], 0);
    assert_eq!(cfg["dtype"], "float32");
    let gen_cfg = read_json(&out.join("generation_config.json"));
    assert_eq!(gen_cfg["eos_token_id"], 2);
    let tok_cfg = read_json(&out.join("tokenizer_config.json"));
    assert_eq!(tok_cfg["eos_token"], "<|im_end|>");
    assert_eq!(tok_cfg["bos_token"], "<|im_start|>");
    assert_eq!(tok_cfg["unk_token"], "<|endoftext|>");
    assert_eq!(tok_cfg["chat_template"], CHATML);
    assert_eq!(tok_cfg["added_tokens_decoder"]["263"]["special"], false);

    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.len() as u64, 2 + 9 * LAYERS);
    assert!(st.tensor("lm_head.weight").is_err());
    let (shape, embd) = f32_tensor(&st, "model.embed_tokens.weight");
    assert_eq!(shape, [264, E as usize]);
    assert_eq!(embd, tiny.tensor("token_embd.weight").values);
    for i in 0..LAYERS {
        let h = |s: &str| format!("model.layers.{i}.{s}.weight");
        let g = |s: &str| tiny.tensor(&format!("blk.{i}.{s}.weight"));
        for (hf, gg, shape) in [
            ("input_layernorm", "attn_norm", vec![E]),
            ("post_attention_layernorm", "ffn_norm", vec![E]),
            ("self_attn.v_proj", "attn_v", vec![KV * HD, E]),
            ("self_attn.o_proj", "attn_output", vec![E, HEADS * HD]),
            ("mlp.gate_proj", "ffn_gate", vec![FF, E]),
            ("mlp.up_proj", "ffn_up", vec![FF, E]),
            ("mlp.down_proj", "ffn_down", vec![E, FF]),
        ] {
            let (s, v) = f32_tensor(&st, &h(hf));
            assert_eq!(
                s.iter().map(|&d| d as u64).collect::<Vec<_>>(),
                shape,
                "{hf}"
            );
            assert_eq!(v, g(gg).values, "{hf} is copied unchanged");
        }
        // Q and K: HF row (head h, half s, index i) is GGUF row (h, 2i + s).
        for (hf, gg, heads) in [
            ("self_attn.q_proj", "attn_q", HEADS),
            ("self_attn.k_proj", "attn_k", KV),
        ] {
            let (s, v) = f32_tensor(&st, &h(hf));
            let rows = (heads * HD) as usize;
            assert_eq!(s, [rows, E as usize]);
            let src = &g(gg).values;
            let row = |m: &[f32], r: usize| m[r * E as usize..(r + 1) * E as usize].to_vec();
            let half = HD as usize / 2;
            for head in 0..heads as usize {
                for hs in 0..2 {
                    for j in 0..half {
                        let hf_row = head * HD as usize + hs * half + j;
                        let gguf_row = head * HD as usize + 2 * j + hs;
                        assert_eq!(row(&v, hf_row), row(src, gguf_row), "{hf} row {hf_row}");
                    }
                }
            }
            // Permuting the imported weights again gives back the GGUF layout.
            assert_eq!(
                &permute_qk_rows(&v, rows, E as usize, heads as usize).unwrap(),
                src
            );
        }
    }

    // The tokenizer loads, applies the merges and matches special tokens inside text.
    let tok = palr::tokenizer::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    assert_eq!(tok.vocab_size(), 264);
    let the = tok.token_to_id("Ġthe").unwrap();
    assert_eq!(tok.encode(" the", false).unwrap(), [the]);
    assert_eq!(
        tok.encode("<|im_start|> the<|im_end|>", false).unwrap(),
        [1, the, 2]
    );
    // Digits are split one by one (the smollm pre-tokenizer), despite the "1 2" merge.
    let one = tok.token_to_id("1").unwrap();
    let two = tok.token_to_id("2").unwrap();
    assert!(tok.token_to_id("12").is_some());
    assert_eq!(tok.encode("12", false).unwrap(), [one, two]);
    assert_eq!(tok.encode("a12", false).unwrap().len(), 3);
    assert_eq!(
        tok.encode("x", true).unwrap().len(),
        1,
        "add_bos_token is false"
    );
    assert_eq!(tok.eos_id(), Some(2));
    assert_eq!(tok.bos_id(), Some(1));
    assert!(tok.is_special(2) && !tok.is_special(263));
}

#[test]
fn untied_head_bf16_and_add_bos() {
    let tmp = tempfile::tempdir().unwrap();
    let mut tiny = Tiny::new();
    let n_vocab = 264;
    let head_vals = values(99, (E * n_vocab) as usize);
    tiny.tensors.push(Tensor {
        name: "output.weight".into(),
        dims: vec![E, n_vocab],
        ty: GgmlType::F32,
        data: head_vals.iter().flat_map(|v| v.to_le_bytes()).collect(),
        values: head_vals.clone(),
    });
    tiny.set("tokenizer.ggml.add_bos_token", Value::Bool(true))
        .set("tokenizer.ggml.eos_token_id", Value::U32(2))
        .set("tokenizer.ggml.padding_token_id", Value::U32(0))
        .set("tokenizer.ggml.pre", Value::String("gpt-2".into()));
    let src = tiny.write(tmp.path());
    let out = tmp.path().join("hf");
    let s = import_gguf(
        &src,
        &out,
        &ImportOptions {
            dtype: OutDtype::Bf16,
            force: false,
        },
    )
    .unwrap();
    assert!(!s.tie_word_embeddings);
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    let cfg = read_json(&out.join("config.json"));
    assert_eq!(cfg["tie_word_embeddings"], false);
    assert_eq!(cfg["dtype"], "bfloat16");
    assert_eq!(cfg["pad_token_id"], 0);
    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let head = st.tensor("lm_head.weight").unwrap();
    assert_eq!(head.dtype(), safetensors::Dtype::BF16);
    assert_eq!(head.shape(), [n_vocab as usize, E as usize]);
    let got: Vec<f32> = head
        .data()
        .chunks_exact(2)
        .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
        .collect();
    assert_eq!(got, head_vals, "these values are exact in bf16");
    let tok = palr::tokenizer::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    let the = tok.token_to_id("Ġthe").unwrap();
    assert_eq!(
        tok.encode(" the", true).unwrap(),
        [1, the],
        "add_bos_token adds <|im_start|>"
    );
    assert_eq!(tok.encode(" the", false).unwrap(), [the]);
    // The plain GPT-2 pre-tokenizer keeps digit runs together, so the "1 2" merge applies.
    assert_eq!(
        tok.encode("12", false).unwrap(),
        [tok.token_to_id("12").unwrap()]
    );
}

/// Each broken model fails with the named error and leaves nothing behind.
#[test]
fn broken_models_fail_cleanly() {
    type Edit = Box<dyn Fn(&mut Tiny)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "missing tensor",
            Box::new(|t| {
                t.remove_tensor("blk.1.ffn_up.weight");
            }),
            "no tensor \"blk.1.ffn_up.weight\"",
        ),
        (
            "unexpected tensor",
            Box::new(|t| {
                t.tensors.push(Tensor {
                    name: "rope_freqs.weight".into(),
                    dims: vec![4],
                    ty: GgmlType::F32,
                    data: vec![0; 16],
                    values: vec![0.0; 4],
                })
            }),
            "rope_freqs.weight",
        ),
        (
            "shape mismatch",
            Box::new(|t| {
                t.set("llama.feed_forward_length", Value::U32(96));
            }),
            "expected [96, 32]",
        ),
        (
            "architecture",
            Box::new(|t| {
                t.set("general.architecture", Value::String("qwen2".into()));
            }),
            "\"qwen2\"",
        ),
        (
            "tokenizer model",
            Box::new(|t| {
                t.set("tokenizer.ggml.model", Value::String("llama".into()));
            }),
            "byte-level BPE",
        ),
        (
            "pre-tokenizer",
            Box::new(|t| {
                t.set("tokenizer.ggml.pre", Value::String("qwen2".into()));
            }),
            "tokenizer.ggml.pre is \"qwen2\"",
        ),
        (
            "merge of unknown token",
            Box::new(|t| {
                t.set("tokenizer.ggml.merges", string_array(["Ġ t", "x yz"]));
            }),
            "\"yz\", which is not a token",
        ),
        (
            "unsupported tensor type",
            Box::new(|t| {
                let q = t
                    .tensors
                    .iter_mut()
                    .find(|t| t.name == "blk.0.ffn_down.weight")
                    .unwrap();
                // 64 x 32 weights = 64 Q5_0 blocks of 32 weights, 22 bytes each.
                q.ty = GgmlType::Q5_0;
                q.data = vec![0; 64 * 22];
            }),
            "Q5_0 (6), which palr cannot dequantize",
        ),
        (
            "heads do not divide",
            Box::new(|t| {
                t.set("llama.attention.head_count_kv", Value::U32(3));
            }),
            "does not divide",
        ),
        (
            "missing hyperparameter",
            Box::new(|t| {
                t.meta.retain(|(k, _)| k != "llama.embedding_length");
            }),
            "llama.embedding_length",
        ),
        (
            "token_type length",
            Box::new(|t| {
                t.set("tokenizer.ggml.token_type", i32_array([1, 1]));
            }),
            "2 entries for 264 tokens",
        ),
    ];
    for (what, edit, needle) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let mut tiny = Tiny::new();
        edit(&mut tiny);
        let src = tiny.write(tmp.path());
        let out = tmp.path().join("hf");
        let e = import_gguf(&src, &out, &ImportOptions::default())
            .err()
            .unwrap_or_else(|| panic!("{what}: imported"));
        assert!(e.to_string().contains(needle), "{what}: {e}");
        assert_eq!(
            leftovers(tmp.path(), &["tiny.gguf"]),
            Vec::<String>::new(),
            "{what}"
        );
    }
}

#[test]
fn existing_output_needs_force() {
    let tmp = tempfile::tempdir().unwrap();
    let src = Tiny::new().write(tmp.path());
    let out = tmp.path().join("hf");
    std::fs::create_dir(&out).unwrap();
    // An empty directory is fine.
    import_gguf(&src, &out, &ImportOptions::default()).unwrap();
    std::fs::write(out.join("stale.txt"), "x").unwrap();
    let e = import_gguf(&src, &out, &ImportOptions::default()).unwrap_err();
    assert!(matches!(e, ImportError::OutputExists(_)), "{e}");
    assert!(
        out.join("stale.txt").exists(),
        "a refused import touches nothing"
    );
    import_gguf(
        &src,
        &out,
        &ImportOptions {
            force: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(
        !out.join("stale.txt").exists(),
        "--force replaces the directory"
    );
    assert!(out.join("model.safetensors").is_file());
    assert_eq!(
        leftovers(tmp.path(), &["tiny.gguf", "hf"]),
        Vec::<String>::new()
    );
}

#[test]
fn out_of_range_special_ids_are_dropped_with_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let mut tiny = Tiny::new();
    tiny.set("tokenizer.ggml.bos_token_id", Value::U32(9999))
        .set(
            "tokenizer.chat_template",
            Value::String("{{ messages }}".into()),
        );
    let src = tiny.write(tmp.path());
    let out = tmp.path().join("hf");
    let s = import_gguf(&src, &out, &ImportOptions::default()).unwrap();
    assert!(
        s.warnings.iter().any(|w| w.contains("bos_token_id = 9999")),
        "{:?}",
        s.warnings
    );
    let cfg = read_json(&out.join("config.json"));
    assert_eq!(cfg["bos_token_id"], Json::Null);
    // Not ChatML: eos is the metadata's (<|endoftext|> here).
    assert_eq!(cfg["eos_token_id"], 0);
}

#[test]
fn cli_import_and_tokenize() {
    let tmp = tempfile::tempdir().unwrap();
    let src = Tiny::new().write(tmp.path());
    let out = tmp.path().join("hf");
    let bin = env!("CARGO_BIN_EXE_palr");
    let run =
        |args: &[&std::ffi::OsStr]| std::process::Command::new(bin).args(args).output().unwrap();
    let o = run(&[
        "model".as_ref(),
        "import-gguf".as_ref(),
        src.as_os_str(),
        out.as_os_str(),
        "--dtype".as_ref(),
        "bf16".as_ref(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("warning"),
        "eos override is reported"
    );
    assert_eq!(read_json(&out.join("config.json"))["dtype"], "bfloat16");
    let o = run(&[
        "tokenize".as_ref(),
        "--model".as_ref(),
        out.as_os_str(),
        "--text".as_ref(),
        "<|im_start|> the".as_ref(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "[1,261]");
    // Errors are reported, not panics.
    let o = run(&[
        "model".as_ref(),
        "import-gguf".as_ref(),
        tmp.path().join("nope.gguf").as_os_str(),
        out.as_os_str(),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("nope.gguf") && !err.contains("panicked"),
        "{err}"
    );
    let o = run(&[
        "model".as_ref(),
        "import-gguf".as_ref(),
        src.as_os_str(),
        out.as_os_str(),
        "--dtype".as_ref(),
        "f16".as_ref(),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("f32 or bf16"));
}
