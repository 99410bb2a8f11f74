//! A tiny random LLaMA, written to a real checkpoint directory and loaded by the
//! engine, against a plain f64 implementation written here from the equations:
//! grouped-query attention, an explicit `head_dim`, RoPE scaling (linear, llama3),
//! tied and untied heads, q/k/v biases, and bf16 weights.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use half::bf16;
use palr::engine::{self, LoadOptions, Logits, WeightDtype};
use palr::model::LlamaConfig;
use safetensors::tensor::TensorView;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f64) -> Vec<f64> {
        (0..n).map(|_| self.next() * scale).collect()
    }
}

type Weights = BTreeMap<String, (Vec<usize>, Vec<f64>)>;

fn make_weights(cfg: &LlamaConfig, rng: &mut Rng) -> Weights {
    let mut w = Weights::new();
    let (d, h, v) = (cfg.dim, cfg.hidden_dim, cfg.vocab_size);
    let mut put = |name: String, shape: Vec<usize>, scale: f64, rng: &mut Rng| {
        let n = shape.iter().product();
        w.insert(name, (shape, rng.vec(n, scale)));
    };
    put("model.embed_tokens.weight".into(), vec![v, d], 1.0, rng);
    for i in 0..cfg.n_layers {
        let p = format!("model.layers.{i}");
        let s = 1.0 / (d as f64).sqrt();
        put(
            format!("{p}.self_attn.q_proj.weight"),
            vec![cfg.q_dim(), d],
            s,
            rng,
        );
        put(
            format!("{p}.self_attn.k_proj.weight"),
            vec![cfg.kv_dim(), d],
            s,
            rng,
        );
        put(
            format!("{p}.self_attn.v_proj.weight"),
            vec![cfg.kv_dim(), d],
            s,
            rng,
        );
        put(
            format!("{p}.self_attn.o_proj.weight"),
            vec![d, cfg.q_dim()],
            s,
            rng,
        );
        if cfg.qkv_bias {
            put(
                format!("{p}.self_attn.q_proj.bias"),
                vec![cfg.q_dim()],
                0.5,
                rng,
            );
            put(
                format!("{p}.self_attn.k_proj.bias"),
                vec![cfg.kv_dim()],
                0.5,
                rng,
            );
            put(
                format!("{p}.self_attn.v_proj.bias"),
                vec![cfg.kv_dim()],
                0.5,
                rng,
            );
        }
        put(format!("{p}.mlp.gate_proj.weight"), vec![h, d], s, rng);
        put(format!("{p}.mlp.up_proj.weight"), vec![h, d], s, rng);
        put(
            format!("{p}.mlp.down_proj.weight"),
            vec![d, h],
            1.0 / (h as f64).sqrt(),
            rng,
        );
        put(format!("{p}.input_layernorm.weight"), vec![d], 1.0, rng);
        put(
            format!("{p}.post_attention_layernorm.weight"),
            vec![d],
            1.0,
            rng,
        );
    }
    put("model.norm.weight".into(), vec![d], 1.0, rng);
    if !cfg.tie_word_embeddings {
        put(
            "lm_head.weight".into(),
            vec![v, d],
            1.0 / (d as f64).sqrt(),
            rng,
        );
    }
    // Norm weights near 1, like trained models.
    for (name, (_, vals)) in w.iter_mut() {
        if name.ends_with("norm.weight") {
            vals.iter_mut().for_each(|x| *x = 1.0 + 0.3 * *x);
        }
    }
    w
}

fn write_checkpoint(dir: &Path, config_json: &str, w: &Weights, dtype: safetensors::Dtype) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), config_json).unwrap();
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = w
        .iter()
        .map(|(n, (shape, vals))| {
            let b = match dtype {
                safetensors::Dtype::F32 => vals
                    .iter()
                    .flat_map(|x| (*x as f32).to_le_bytes())
                    .collect(),
                safetensors::Dtype::BF16 => vals
                    .iter()
                    .flat_map(|x| bf16::from_f64(*x).to_le_bytes())
                    .collect(),
                _ => unreachable!(),
            };
            (n.clone(), shape.clone(), b)
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = bytes
        .iter()
        .map(|(n, s, b)| (n.clone(), TensorView::new(dtype, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
}

/// Rounds weights as stored in a file (`matrices_only = false`) or as the engine
/// holds them in memory (matrices in `dtype`, vectors in f32: `matrices_only = true`).
fn rounded(w: &Weights, dtype: WeightDtype, matrices_only: bool) -> Weights {
    w.iter()
        .map(|(n, (s, v))| {
            let dtype = if matrices_only && s.len() != 2 {
                WeightDtype::F32
            } else {
                dtype
            };
            let v = match dtype {
                WeightDtype::F32 => v.iter().map(|x| *x as f32 as f64).collect(),
                WeightDtype::Bf16 => v.iter().map(|x| bf16::from_f64(*x).to_f64()).collect(),
            };
            (n.clone(), (s.clone(), v))
        })
        .collect()
}

/// Reference forward pass in f64 over the whole sequence; logits of every position.
/// `round_inputs`: the projections' inputs are rounded to bf16 first, as the CPU's bf16
/// dot-product kernels do (the LM head is not one of them).
fn reference_logits(
    cfg: &LlamaConfig,
    w: &Weights,
    tokens: &[u32],
    round_inputs: bool,
) -> Vec<Vec<f64>> {
    let get = |n: &str| &w[n].1;
    let (d, nh, nkv, hd) = (cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
    let t = tokens.len();
    let matvec = |m: &[f64], x: &[f64], out_dim: usize| -> Vec<f64> {
        (0..out_dim)
            .map(|o| (0..x.len()).map(|i| m[o * x.len() + i] * x[i]).sum())
            .collect()
    };
    let rms = |x: &[f64], g: &[f64]| -> Vec<f64> {
        let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
        let inv = 1.0 / (ms + cfg.norm_eps as f64).sqrt();
        x.iter().zip(g).map(|(v, g)| v * inv * g).collect()
    };
    let inv_freq = cfg.rope_inv_freq();
    let rope = |x: &mut [f64], pos: usize| {
        let half = hd / 2;
        for head in x.chunks_mut(hd) {
            for i in 0..half {
                let a = pos as f64 * inv_freq[i];
                let (s, c) = a.sin_cos();
                let (x0, x1) = (head[i], head[i + half]);
                head[i] = x0 * c - x1 * s;
                head[i + half] = x1 * c + x0 * s;
            }
        }
    };
    let emb = get("model.embed_tokens.weight");
    let mut xs: Vec<Vec<f64>> = tokens
        .iter()
        .map(|&tok| emb[tok as usize * d..][..d].to_vec())
        .collect();
    for l in 0..cfg.n_layers {
        let p = format!("model.layers.{l}");
        let lin = |name: &str, x: &[f64], out: usize| -> Vec<f64> {
            let rounded: Vec<f64>;
            let x = if round_inputs {
                rounded = x
                    .iter()
                    .map(|&v| half::bf16::from_f64(v).to_f64())
                    .collect();
                &rounded[..]
            } else {
                x
            };
            let mut y = matvec(get(&format!("{p}.{name}.weight")), x, out);
            if let Some((_, b)) = w.get(&format!("{p}.{name}.bias")) {
                y.iter_mut().zip(b).for_each(|(y, b)| *y += b);
            }
            y
        };
        let hs: Vec<Vec<f64>> = xs
            .iter()
            .map(|x| rms(x, get(&format!("{p}.input_layernorm.weight"))))
            .collect();
        let mut qs = Vec::new();
        let mut ks = Vec::new();
        let mut vs = Vec::new();
        for (pos, h) in hs.iter().enumerate() {
            let mut q = lin("self_attn.q_proj", h, nh * hd);
            let mut k = lin("self_attn.k_proj", h, nkv * hd);
            rope(&mut q, pos);
            rope(&mut k, pos);
            qs.push(q);
            ks.push(k);
            vs.push(lin("self_attn.v_proj", h, nkv * hd));
        }
        for i in 0..t {
            let mut att = vec![0.0; nh * hd];
            for head in 0..nh {
                let g = head / (nh / nkv);
                let q = &qs[i][head * hd..][..hd];
                let s: Vec<f64> = (0..=i)
                    .map(|j| {
                        q.iter()
                            .zip(&ks[j][g * hd..][..hd])
                            .map(|(a, b)| a * b)
                            .sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let mx = s.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - mx).exp()).collect();
                let z: f64 = e.iter().sum();
                for (j, ej) in e.iter().enumerate() {
                    for dd in 0..hd {
                        att[head * hd + dd] += ej / z * vs[j][g * hd + dd];
                    }
                }
            }
            let o = lin("self_attn.o_proj", &att, d);
            xs[i].iter_mut().zip(&o).for_each(|(x, o)| *x += o);
            let h = rms(&xs[i], get(&format!("{p}.post_attention_layernorm.weight")));
            let gate = lin("mlp.gate_proj", &h, cfg.hidden_dim);
            let up = lin("mlp.up_proj", &h, cfg.hidden_dim);
            let act: Vec<f64> = gate
                .iter()
                .zip(&up)
                .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                .collect();
            let down = lin("mlp.down_proj", &act, d);
            xs[i].iter_mut().zip(&down).for_each(|(x, o)| *x += o);
        }
    }
    let head = w
        .get("lm_head.weight")
        .unwrap_or(&w["model.embed_tokens.weight"])
        .1
        .clone();
    xs.iter()
        .map(|x| matvec(&head, &rms(x, get("model.norm.weight")), cfg.vocab_size))
        .collect()
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("palr-tiny-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn max_rel_err(got: &[f32], want: &[f64]) -> f64 {
    let scale = want.iter().map(|v| v.abs()).fold(0.0, f64::max).max(1e-6);
    got.iter()
        .zip(want)
        .map(|(g, w)| (*g as f64 - w).abs() / scale)
        .fold(0.0, f64::max)
}

fn check(
    name: &str,
    config_json: &str,
    file_dtype: safetensors::Dtype,
    dtype: WeightDtype,
    tol: f64,
) {
    let cfg = LlamaConfig::from_json(config_json).unwrap();
    let mut rng = Rng(name.len() as u64 * 7919);
    let w = make_weights(&cfg, &mut rng);
    let dir = tmpdir(name);
    write_checkpoint(&dir, config_json, &w, file_dtype);
    let stored = match file_dtype {
        safetensors::Dtype::BF16 => rounded(&w, WeightDtype::Bf16, false),
        _ => rounded(&w, WeightDtype::F32, false),
    };
    let want_w = rounded(&stored, dtype, true);
    let tokens: Vec<u32> = (0..23)
        .map(|i| (i * 7 + 3) as u32 % cfg.vocab_size as u32)
        .collect();
    // bf16 weights on a CPU with bf16 dot products: the projections round their inputs.
    let rounds = dtype == WeightDtype::Bf16 && palr::engine::cpu::bf16mm::best().is_some();
    let want = reference_logits(&cfg, &want_w, &tokens, rounds);
    for max_batch_rows in [64, 5] {
        let opts = LoadOptions {
            dtype,
            threads: 2,
            max_batch_rows,
            ..LoadOptions::default()
        };
        let model = engine::load(&dir, &opts).unwrap();
        let v = cfg.vocab_size;
        // Every position at once.
        let mut s = model.clone().new_session(tokens.len()).unwrap();
        let all = s.feed(&tokens, Logits::All).unwrap().to_vec();
        for (pos, want_row) in want.iter().enumerate() {
            let err = max_rel_err(&all[pos * v..(pos + 1) * v], want_row);
            assert!(
                err < tol,
                "{name} (chunks of {max_batch_rows}): position {pos} error {err:.2e}"
            );
        }
        // Prefill then decode one token at a time.
        let mut s = model.clone().new_session(tokens.len()).unwrap();
        s.feed(&tokens[..9], Logits::Last).unwrap();
        for (i, &tok) in tokens.iter().enumerate().skip(9) {
            let got = s.feed(&[tok], Logits::Last).unwrap();
            let err = max_rel_err(got, &want[i]);
            assert!(err < tol, "{name}: decode at {i} error {err:.2e}");
        }
        // Fork a prefix into a second session and continue there.
        let mut fork = model.new_session(tokens.len()).unwrap();
        fork.copy_prefix_from(s.as_ref(), 15).unwrap();
        let got = fork.feed(&tokens[15..], Logits::Last).unwrap();
        let err = max_rel_err(got, want.last().unwrap());
        assert!(err < tol, "{name}: forked prefix error {err:.2e}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

const BASE: &str = r#""hidden_size":24,"intermediate_size":40,"num_hidden_layers":2,"vocab_size":61,
    "max_position_embeddings":64,"rms_norm_eps":1e-5,"hidden_act":"silu""#;

#[test]
fn gqa_explicit_head_dim_llama3_rope_untied() {
    let cfg = format!(
        r#"{{"architectures":["LlamaForCausalLM"],{BASE},"num_attention_heads":4,"num_key_value_heads":2,
        "head_dim":8,"tie_word_embeddings":false,"rope_theta":500.0,
        "rope_scaling":{{"rope_type":"llama3","factor":4.0,"low_freq_factor":1.0,"high_freq_factor":4.0,
        "original_max_position_embeddings":16}}}}"#
    );
    check(
        "gqa-llama3",
        &cfg,
        safetensors::Dtype::F32,
        WeightDtype::F32,
        1e-4,
    );
}

#[test]
fn mha_tied_linear_rope() {
    let cfg = format!(
        r#"{{"architectures":["LlamaForCausalLM"],{BASE},"num_attention_heads":3,"num_key_value_heads":3,
        "tie_word_embeddings":true,"rope_theta":10000.0,"rope_scaling":{{"type":"linear","factor":2.0}}}}"#
    );
    check(
        "mha-tied",
        &cfg,
        safetensors::Dtype::F32,
        WeightDtype::F32,
        1e-4,
    );
}

#[test]
fn multi_query_with_qkv_bias() {
    let cfg = format!(
        r#"{{"architectures":["Qwen2ForCausalLM"],{BASE},"num_attention_heads":6,"num_key_value_heads":1,
        "tie_word_embeddings":false,"rope_theta":1000000.0}}"#
    );
    check(
        "mqa-bias",
        &cfg,
        safetensors::Dtype::F32,
        WeightDtype::F32,
        1e-4,
    );
}

#[test]
fn bf16_weights_from_f32_and_bf16_files() {
    let cfg = format!(
        r#"{{"architectures":["LlamaForCausalLM"],{BASE},"num_attention_heads":4,"num_key_value_heads":2,
        "tie_word_embeddings":false,"rope_theta":10000.0}}"#
    );
    // The reference uses the same bf16-rounded weights (and, where the CPU has bf16 dot
    // products, bf16-rounded projection inputs): only f32 arithmetic differs.
    check(
        "bf16-from-f32",
        &cfg,
        safetensors::Dtype::F32,
        WeightDtype::Bf16,
        1e-4,
    );
    check(
        "bf16-from-bf16",
        &cfg,
        safetensors::Dtype::BF16,
        WeightDtype::Bf16,
        1e-4,
    );
    check(
        "f32-from-bf16",
        &cfg,
        safetensors::Dtype::BF16,
        WeightDtype::F32,
        1e-4,
    );
}

#[test]
fn missing_and_misshapen_tensors_are_named() {
    let cfg_json = format!(
        r#"{{"architectures":["LlamaForCausalLM"],{BASE},"num_attention_heads":4,"num_key_value_heads":2,
        "tie_word_embeddings":false}}"#
    );
    let cfg = LlamaConfig::from_json(&cfg_json).unwrap();
    let mut w = make_weights(&cfg, &mut Rng(1));
    w.remove("model.layers.1.mlp.up_proj.weight");
    let dir = tmpdir("missing");
    write_checkpoint(&dir, &cfg_json, &w, safetensors::Dtype::F32);
    let err = engine::load(&dir, &LoadOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("model.layers.1.mlp.up_proj.weight"), "{err}");

    let mut w = make_weights(&cfg, &mut Rng(1));
    w.insert(
        "model.layers.0.self_attn.k_proj.weight".into(),
        (vec![24, 24], vec![0.0; 576]),
    );
    write_checkpoint(&dir, &cfg_json, &w, safetensors::Dtype::F32);
    let err = engine::load(&dir, &LoadOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("k_proj") && err.contains("[12, 24]") && err.contains("[24, 24]"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn session_errors_are_clear() {
    let cfg_json = format!(
        r#"{{"architectures":["LlamaForCausalLM"],{BASE},"num_attention_heads":4,"num_key_value_heads":2}}"#
    );
    let cfg = LlamaConfig::from_json(&cfg_json).unwrap();
    let dir = tmpdir("session-errors");
    write_checkpoint(
        &dir,
        &cfg_json,
        &make_weights(&cfg, &mut Rng(2)),
        safetensors::Dtype::F32,
    );
    let model = engine::load(&dir, &LoadOptions::default()).unwrap();
    let mut s = model.clone().new_session(4).unwrap();
    let err = s
        .feed(&[1, 2, 3, 4, 5], Logits::Last)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("context full"), "{err}");
    let err = s.feed(&[61], Logits::Last).err().unwrap().to_string();
    assert!(err.contains("61") && err.contains("vocabulary"), "{err}");
    assert!(s.feed(&[], Logits::Last).is_err());
    assert!(s.is_empty(), "failed feeds must not advance the session");
    s.feed(&[1, 2], Logits::None).unwrap();
    assert!(s.truncate(3).is_err());
    s.truncate(1).unwrap();
    assert_eq!(s.len(), 1);
    assert!(model.new_session(0).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `palr bench engine` reports the argmax after the prefill of its fixed prompt as
/// `first_token`: the peer harnesses (benchmarks/peers/) compare against it.
#[test]
fn bench_first_token_is_the_prefill_argmax() {
    let cfg_json = format!(
        r#"{{"architectures":["LlamaForCausalLM"],{BASE},"num_attention_heads":4,"num_key_value_heads":2}}"#
    );
    let cfg = LlamaConfig::from_json(&cfg_json).unwrap();
    let dir = tmpdir("bench-first-token");
    let w = make_weights(&cfg, &mut Rng(5));
    write_checkpoint(&dir, &cfg_json, &w, safetensors::Dtype::F32);
    let prompt = palr::bench::engine::prompt_ids(20, cfg.vocab_size);
    let want_logits = reference_logits(&cfg, &w, &prompt, false);
    let last = want_logits.last().unwrap();
    let want =
        (0..last.len()).fold(0, |best, i| if last[i] > last[best] { i } else { best }) as u32;
    // A report that never set the field would read 0: make sure that cannot pass.
    assert_ne!(want, 0, "choose weights whose argmax is not token 0");
    let args = palr::bench::engine::EngineBenchOptions {
        model: dir.clone(),
        prompt_tokens: 20,
        decode_tokens: 3,
        device: palr::engine::Device::Cpu,
        dtype: WeightDtype::F32,
        threads: 2,
        warmup: 0,
        runs: 2,
    };
    let report = palr::bench::engine::run(&args).unwrap();
    assert_eq!(report.first_token, want);
    assert_eq!(report.prefill_runs_s.len(), 2);
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["first_token"].as_u64(), Some(want as u64));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn concurrent_sessions_share_one_cpu_backend() {
    // Wide enough (inner dimension >= 256) that the matrix-vector kernel and the bf16
    // widening run parallel work, during which rayon may run another session's job on a
    // waiting thread: per-thread scratch must not be borrowed across that. Each thread's
    // logits must equal the same session run alone.
    let cfg_json = r#"{"architectures":["LlamaForCausalLM"],"hidden_size":256,"intermediate_size":512,
        "num_hidden_layers":2,"vocab_size":61,"max_position_embeddings":64,"rms_norm_eps":1e-5,
        "hidden_act":"silu","num_attention_heads":4,"num_key_value_heads":2,
        "tie_word_embeddings":false,"rope_theta":10000.0}"#;
    let cfg = LlamaConfig::from_json(cfg_json).unwrap();
    let mut rng = Rng(4242);
    let w = make_weights(&cfg, &mut rng);
    let dir = tmpdir("concurrent-sessions");
    write_checkpoint(&dir, cfg_json, &w, safetensors::Dtype::F32);
    for dtype in [WeightDtype::F32, WeightDtype::Bf16] {
        let opts = LoadOptions {
            dtype,
            threads: 2,
            ..LoadOptions::default()
        };
        let model = engine::load(&dir, &opts).unwrap();
        let run = |seed: u32| -> Vec<Vec<f32>> {
            let tokens: Vec<u32> = (0..30).map(|i| (i * 7 + seed * 13) % 61).collect();
            let mut s = model.clone().new_session(tokens.len()).unwrap();
            let mut out = vec![s.feed(&tokens[..16], Logits::Last).unwrap().to_vec()];
            for &t in &tokens[16..] {
                out.push(s.feed(&[t], Logits::Last).unwrap().to_vec());
            }
            out
        };
        let alone: Vec<_> = (0..4).map(run).collect();
        std::thread::scope(|sc| {
            let handles: Vec<_> = (0..4u32)
                .map(|seed| sc.spawn(move || (0..3).map(|_| run(seed)).collect::<Vec<_>>()))
                .collect();
            for (seed, h) in handles.into_iter().enumerate() {
                for got in h.join().expect("a session thread panicked") {
                    assert_eq!(
                        got, alone[seed],
                        "{dtype}: session {seed} differs when run concurrently"
                    );
                }
            }
        });
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `feed_until` stops between layers when asked, leaves the session as it was, and the same
/// tokens fed afterwards give exactly the logits of an uninterrupted session.
#[test]
fn interrupted_feeds_stop_between_layers_and_leave_the_cache_intact() {
    let cfg_json = format!(
        r#"{{"architectures":["LlamaForCausalLM"],{BASE},"num_attention_heads":4,"num_key_value_heads":2}}"#
    );
    let cfg = LlamaConfig::from_json(&cfg_json).unwrap();
    let dir = tmpdir("interrupted");
    write_checkpoint(
        &dir,
        &cfg_json,
        &make_weights(&cfg, &mut Rng(9)),
        safetensors::Dtype::F32,
    );
    let model = engine::load(&dir, &LoadOptions::default()).unwrap();
    let mut plain = model.clone().new_session(16).unwrap();
    plain.feed(&[1, 2, 3], Logits::None).unwrap();
    let want = plain.feed(&[4, 5, 6], Logits::Last).unwrap().to_vec();

    let mut s = model.clone().new_session(16).unwrap();
    s.feed(&[1, 2, 3], Logits::None).unwrap();
    // Stop after the first layer: the check runs before each block.
    let checks = std::sync::atomic::AtomicUsize::new(0);
    let stop = || checks.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= 1;
    let err = s.feed_until(&[4, 5, 6], Logits::Last, &stop).err().unwrap();
    assert!(
        matches!(err, palr::engine::EngineError::Interrupted),
        "{err}"
    );
    assert_eq!(
        checks.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "stopped at layer 2"
    );
    assert_eq!(s.len(), 3, "the interrupted positions were not added");
    let got = s.feed(&[4, 5, 6], Logits::Last).unwrap().to_vec();
    assert_eq!(got, want);
    let _ = std::fs::remove_dir_all(&dir);
}
