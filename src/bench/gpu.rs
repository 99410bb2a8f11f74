//! `palr bench gpu`: timings of the CUDA backend, each next to its physical floor.
//!
//! Parts (`--parts`, all by default):
//! - `ceilings`: the two measured ceilings every floor uses — a 1 GiB
//!   device-to-device copy (bytes read + written per second) and an
//!   8192×8192×8192 bf16 product through cuBLAS (FLOP/s), on random data;
//! - `attention`: causal prefill attention (tensor-core kernel) at sequence
//!   512..4096 and decode attention (split-sequence kernel, one query row) over
//!   512..4096 cached positions, head sizes 64 and 128, 32 heads;
//! - `model`: the whole forward pass of SmolLM2-135M- and LLaMA-2-7B-shaped
//!   models with random bf16 weights made on the GPU (no file): prefill of
//!   `--prompt-tokens` tokens and decode tokens/s after it;
//!   The `model` part also times the engine work of a score-mode Rank (the
//!   prompt's 283-token suffix fed after a cached 50-token prefix, last-row
//!   logits), the shape of a served request (333 prompt tokens);
//! - `lora`: every projection of the 7B shape (7 per layer, 32 layers) with and
//!   without unmerged rank-16 LoRA adapters (4 adapters per projection, the
//!   batch's rows split among them) — merged adapters cost nothing extra, so the
//!   difference is the unmerged overhead;
//! - `model-lora`: the whole 7B-shaped forward (prefill and decode) with one
//!   rank-16 adapter on all 7 projections of every layer, applied unmerged by the
//!   engine's own path (`Backend::lora_update`: the SGMV kernels), against the same
//!   model with the adapter off.
//!
//! Kernel times come from device events around the queued work (median of
//! `--runs` after a warm-up); model times from the host clock around calls that
//! end in a download (so they include launch overhead, as a server sees it).
//! Inputs are rotated among several copies when one copy would fit in L2.
//! Every record is one JSON line in `--json`; `scripts/gpu/gpu_report.py` puts them
//! next to PyTorch's figures for the same shapes.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use super::stats::median;
use super::{BenchError, Result, ensure};
use crate::engine::backend::{Backend, Heads, KvLayer};
use crate::engine::cuda::{CudaBackend, CudaBuf, LoraAdapter, LoraSegment, synthetic};
use crate::engine::{Device, LanguageModel, Logits, Model};

/// What `palr bench gpu` measures (the command line's defaults in brackets).
#[derive(Debug, Clone)]
pub struct GpuBenchOptions {
    /// The GPU (`cuda:N`) [cuda:0].
    pub device: Device,
    /// Parts to run, of [`PARTS`] [all].
    pub parts: Vec<String>,
    /// Model shapes for the `model` part: smollm2-135m, llama2-7b [both].
    pub models: Vec<String>,
    /// Prompt length of the prefill measurement [1024].
    pub prompt_tokens: usize,
    /// Tokens generated one at a time after the prompt [64].
    pub decode_tokens: usize,
    /// Timed runs per figure (the median is reported), after one warm-up [10].
    pub runs: usize,
    /// Append one JSON object per figure to this file.
    pub json: Option<PathBuf>,
    /// Tiny sizes everywhere (a smoke run of the benchmark itself, e.g. on the fake device
    /// of scripts/gpu/fake-gpu.sh): the figures mean nothing.
    pub quick: bool,
}

/// The parts, in the order they run.
pub const PARTS: [&str; 5] = ["ceilings", "attention", "model", "lora", "model-lora"];

/// One measured figure.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub part: String,
    pub name: String,
    /// Median milliseconds.
    pub ms: f64,
    pub runs_ms: Vec<f64>,
    /// Bytes that must move through device memory (each input read once, each output written once).
    pub bytes: f64,
    /// Floating-point operations.
    pub flops: f64,
    /// Extra figures (tokens/s, TB/s, overhead, shapes).
    pub extra: serde_json::Value,
}

struct Out {
    file: Option<(PathBuf, std::fs::File)>,
    records: Vec<Record>,
}

impl Out {
    fn push(&mut self, r: Record) -> Result<()> {
        println!(
            "{:<10} {:<44} {:>10.4} ms  {}",
            r.part,
            r.name,
            r.ms,
            if r.extra.is_null() {
                String::new()
            } else {
                r.extra.to_string()
            }
        );
        if let Some((path, f)) = &mut self.file {
            let line = serde_json::to_string(&r).expect("a record serialises");
            writeln!(f, "{line}")
                .and_then(|()| f.flush())
                .map_err(|source| BenchError::Io {
                    path: path.display().to_string(),
                    source,
                })?;
        }
        self.records.push(r);
        Ok(())
    }
}

/// Runs the benchmark; returns every record (also printed, and written to `--json`).
pub fn run(args: &GpuBenchOptions) -> Result<Vec<Record>> {
    ensure(args.runs > 0, || "--runs must be at least 1".into())?;
    let Device::Cuda(ordinal) = args.device else {
        return Err(BenchError::Invalid(
            "palr bench gpu needs a CUDA device (--device cuda:N)".into(),
        ));
    };
    for p in &args.parts {
        ensure(PARTS.contains(&p.as_str()), || {
            format!("unknown part {p:?}; use {}", PARTS.join(", "))
        })?;
    }
    let file = match &args.json {
        Some(p) => Some((
            p.clone(),
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|source| BenchError::Io {
                    path: p.display().to_string(),
                    source,
                })?,
        )),
        None => None,
    };
    let mut out = Out {
        file,
        records: Vec::new(),
    };
    let has = |p: &str| args.parts.iter().any(|x| x == p);
    let backend = CudaBackend::new(ordinal)?;
    eprintln!("device: {}", backend.describe());
    if has("ceilings") {
        ceilings(&backend, args, &mut out)?;
    }
    if has("attention") {
        attention(&backend, args, &mut out)?;
    }
    if has("lora") {
        lora(ordinal, args, &mut out)?;
    }
    if has("model") {
        for m in &args.models {
            model(ordinal, m, args, &mut out)?;
        }
    }
    if has("model-lora") {
        model_lora(
            ordinal,
            if args.quick {
                "smollm2-135m"
            } else {
                "llama2-7b"
            },
            args,
            &mut out,
        )?;
    }
    Ok(out.records)
}

fn ceilings(b: &CudaBackend, args: &GpuBenchOptions, out: &mut Out) -> Result<()> {
    let bytes = if args.quick { 1 << 24 } else { 1usize << 30 };
    let ms: Vec<f64> = b
        .copy_bandwidth_ms(bytes, args.runs)?
        .into_iter()
        .map(f64::from)
        .collect();
    let m = median(&ms);
    out.push(Record {
        part: "ceilings".into(),
        name: if args.quick {
            "copy 16 MiB device to device (quick)".into()
        } else {
            "copy 1 GiB device to device".into()
        },
        ms: m,
        runs_ms: ms,
        bytes: 2.0 * bytes as f64,
        flops: 0.0,
        extra: serde_json::json!({ "tb_s": 2.0 * bytes as f64 / (m * 1e-3) / 1e12 }),
    })?;
    let n = if args.quick { 256 } else { 8192 };
    let ms: Vec<f64> = b
        .gemm_ms(n, n, n, args.runs)?
        .into_iter()
        .map(f64::from)
        .collect();
    let m = median(&ms);
    let flops = 2.0 * (n as f64).powi(3);
    out.push(Record {
        part: "ceilings".into(),
        name: format!("bf16 matmul {n}x{n}x{n} (cuBLAS)"),
        ms: m,
        runs_ms: ms,
        bytes: 3.0 * 2.0 * (n * n) as f64,
        flops,
        extra: serde_json::json!({ "tflop_s": flops / (m * 1e-3) / 1e12 }),
    })?;
    Ok(())
}

/// Copies of the inputs so that one timed run does not find the previous run's
/// inputs in L2 (at least 4× the L2 size in all).
fn copies_for(bytes_per_set: usize, l2: usize) -> usize {
    (4 * l2).div_ceil(bytes_per_set.max(1)).clamp(1, 16)
}

fn attention(b: &CudaBackend, args: &GpuBenchOptions, out: &mut Out) -> Result<()> {
    let n_heads = if args.quick { 2 } else { 32 };
    let seqs: &[usize] = if args.quick {
        &[80]
    } else {
        &[512, 1024, 2048, 4096]
    };
    for hd in [64usize, 128] {
        let heads = Heads {
            n_heads,
            n_kv_heads: n_heads,
            head_dim: hd,
        };
        for &seq in seqs {
            // Prefill: seq queries over seq keys, causal.
            let qn = seq * n_heads * hd;
            let set_bytes = 4 * 2 * qn;
            let sets = copies_for(set_bytes, b.info().l2_bytes);
            let mut inputs = Vec::new();
            for s in 0..sets {
                let mut q = b.alloc_bf16(qn)?;
                b.fill_uniform(&mut q, 100 + s as u64, 1.0, 0.0)?;
                let mut k = b.alloc_kv(qn)?;
                let mut v = b.alloc_kv(qn)?;
                b.fill_uniform(&mut k, 200 + s as u64, 1.0, 0.0)?;
                b.fill_uniform(&mut v, 300 + s as u64, 1.0, 0.0)?;
                inputs.push((q, KvLayer { k, v }));
            }
            let mut o = b.alloc_bf16(qn)?;
            let ms = time_kernel(b, args.runs, |i| {
                let (q, kv) = &inputs[i % sets];
                b.attention(q, kv, seq, 0, heads, seq, &mut o)
            })?;
            let pairs = (seq * (seq + 1) / 2) as f64;
            let flops = 4.0 * pairs * (hd * n_heads) as f64;
            out.push(Record {
                part: "attention".into(),
                name: format!("prefill causal seq {seq} hd {hd}"),
                ms: median(&ms),
                runs_ms: ms,
                bytes: set_bytes as f64,
                flops,
                extra: serde_json::json!({ "seq": seq, "head_dim": hd, "heads": n_heads, "kernel": "flash (mma.sync)" }),
            })?;
            drop(inputs);

            // Decode: one query row over seq cached positions.
            let set_bytes = 2 * 2 * qn + 2 * 2 * n_heads * hd;
            let sets = copies_for(set_bytes, b.info().l2_bytes);
            let mut inputs = Vec::new();
            for s in 0..sets {
                let mut q = b.alloc_bf16(n_heads * hd)?;
                b.fill_uniform(&mut q, 400 + s as u64, 1.0, 0.0)?;
                let mut k = b.alloc_kv(qn)?;
                let mut v = b.alloc_kv(qn)?;
                b.fill_uniform(&mut k, 500 + s as u64, 1.0, 0.0)?;
                b.fill_uniform(&mut v, 600 + s as u64, 1.0, 0.0)?;
                inputs.push((q, KvLayer { k, v }));
            }
            let mut o = b.alloc_bf16(n_heads * hd)?;
            let ms = time_kernel(b, args.runs.max(20), |i| {
                let (q, kv) = &inputs[i % sets];
                b.attention(q, kv, 1, seq - 1, heads, seq, &mut o)
            })?;
            out.push(Record {
                part: "attention".into(),
                name: format!("decode 1 row over {seq} hd {hd}"),
                ms: median(&ms),
                runs_ms: ms,
                bytes: set_bytes as f64,
                flops: 4.0 * (seq * hd * n_heads) as f64,
                extra: serde_json::json!({ "seq": seq, "head_dim": hd, "heads": n_heads, "kernel": "split-sequence" }),
            })?;
        }
    }
    Ok(())
}

/// Device-event times (ms) of `runs` calls of `f(i)` after one warm-up call.
fn time_kernel(
    b: &CudaBackend,
    runs: usize,
    mut f: impl FnMut(usize) -> crate::engine::Result<()>,
) -> Result<Vec<f64>> {
    f(0)?;
    b.synchronize()?;
    let mut v = Vec::with_capacity(runs);
    for i in 1..=runs {
        let ((), ms) = b.elapsed_ms(|_| f(i))?;
        v.push(ms as f64);
    }
    Ok(v)
}

fn model(ordinal: usize, name: &str, args: &GpuBenchOptions, out: &mut Out) -> Result<()> {
    let cfg = synthetic::preset(name)?;
    let backend = CudaBackend::new(ordinal)?;
    let t = Instant::now();
    let llama = synthetic::llama(cfg.clone(), backend, 7)?;
    eprintln!(
        "{name}: {:.2} GB of random bf16 weights made on the GPU in {:.1?}",
        synthetic::weight_bytes(&cfg) as f64 / 1e9,
        t.elapsed()
    );
    let model: Arc<dyn LanguageModel> = Arc::new(Model::new(llama, args.prompt_tokens));
    let prompt = super::engine::prompt_ids(args.prompt_tokens, cfg.vocab_size);
    let capacity = args.prompt_tokens + args.decode_tokens;
    let mut session = model.clone().new_session(capacity)?;
    let (mut prefill, mut decode) = (Vec::new(), Vec::new());
    for run in 0..=args.runs.min(5) {
        session.truncate(0)?;
        let t = Instant::now();
        session.feed(&prompt, Logits::Last)?;
        let tp = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        for i in 0..args.decode_tokens {
            session.feed(&[prompt[i % prompt.len()]], Logits::Last)?;
        }
        let td = t.elapsed().as_secs_f64() * 1e3 / args.decode_tokens.max(1) as f64;
        if run > 0 {
            prefill.push(tp);
            decode.push(td);
        }
    }
    // Weights: the layers' matrices, the head (the embedding when tied); the
    // embedding lookup reads one row per token (negligible).
    let layers = synthetic::layer_parameter_count(&cfg) as f64;
    let head = (cfg.vocab_size * cfg.dim) as f64;
    let (n, l) = (args.prompt_tokens as f64, cfg.n_layers as f64);
    // Causal attention: QKᵀ and PV over n(n+1)/2 (query, key) pairs per head.
    let attn_flops = |pairs: f64| l * 4.0 * pairs * cfg.q_dim() as f64;
    // Prefill produces the last row's logits only: the head runs once.
    let prefill_flops = 2.0 * layers * n + 2.0 * head + attn_flops(n * (n + 1.0) / 2.0);
    let weight_bytes = 2.0 * (layers + head);
    let pm = median(&prefill);
    out.push(Record {
        part: "model".into(),
        name: format!("{name} prefill {} tokens", args.prompt_tokens),
        ms: pm,
        runs_ms: prefill,
        bytes: weight_bytes,
        flops: prefill_flops,
        extra: serde_json::json!({ "tokens_s": n / (pm * 1e-3), "model": name }),
    })?;
    // Decode: every weight once per token plus the KV cache at the average context.
    let avg_ctx = n + args.decode_tokens as f64 / 2.0;
    let kv_bytes = l * 2.0 * avg_ctx * cfg.kv_dim() as f64 * 2.0;
    let decode_bytes = weight_bytes + kv_bytes;
    let decode_flops = 2.0 * (layers + head) + attn_flops(avg_ctx);
    let dm = median(&decode);
    out.push(Record {
        part: "model".into(),
        name: format!("{name} decode (per token, after {})", args.prompt_tokens),
        ms: dm,
        runs_ms: decode,
        bytes: decode_bytes,
        flops: decode_flops,
        extra: serde_json::json!({ "tokens_s": 1e3 / dm, "model": name }),
    })?;

    // Score-mode Rank: a 333-token prompt whose first 50 tokens (the shared
    // prefix) are cached; the ranker feeds the rest and reads the last row's logits.
    let (prefix, total) = (50usize.min(prompt.len() / 2), 333usize.min(prompt.len()));
    session.truncate(0)?;
    session.feed(&prompt[..prefix], Logits::None)?;
    let mut rank = Vec::new();
    for run in 0..=args.runs {
        session.truncate(prefix)?;
        let t = Instant::now();
        session.feed(&prompt[prefix..total], Logits::Last)?;
        if run > 0 {
            rank.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let suffix = (total - prefix) as f64;
    out.push(Record {
        part: "model".into(),
        name: format!(
            "{name} score-mode rank ({} new + {prefix} cached tokens)",
            total - prefix
        ),
        ms: median(&rank),
        runs_ms: rank,
        bytes: weight_bytes,
        flops: 2.0 * layers * suffix + 2.0 * head + attn_flops(suffix * (suffix + 1.0) / 2.0),
        extra: serde_json::json!({ "model": name, "prompt_tokens": total }),
    })?;
    Ok(())
}

/// The 7B-shaped forward with one rank-16 adapter on all projections, unmerged,
/// against the same weights with the adapter off (`Llama::set_adapter`).
fn model_lora(ordinal: usize, name: &str, args: &GpuBenchOptions, out: &mut Out) -> Result<()> {
    let cfg = synthetic::preset(name)?;
    let rank = 16;
    let backend = CudaBackend::new(ordinal)?;
    let llama = synthetic::llama(cfg.clone(), backend, 11)?;
    let lora = std::sync::Arc::new(synthetic::random_lora(&llama, rank, 5)?);
    let vocab = cfg.vocab_size as u32;
    let n = if args.quick { 8 } else { args.prompt_tokens };
    let prompt: Vec<u32> = (0..n as u32).map(|i| (i * 7919 + 13) % vocab).collect();
    let decode_tokens = if args.quick {
        2
    } else {
        args.decode_tokens.min(32)
    };
    let mut st = llama.new_state(n + decode_tokens, n)?;
    let b = &llama.backend;
    let mut figures = Vec::new();
    for adapter in [None, Some(lora)] {
        st.len = 0;
        llama.set_adapter(&mut st, adapter)?;
        let (mut prefill, mut decode) = (Vec::new(), Vec::new());
        for run in 0..=args.runs.min(5) {
            st.len = 0;
            let t = Instant::now();
            llama.forward(&mut st, &prompt, Logits::Last)?;
            b.synchronize()?;
            let tp = t.elapsed().as_secs_f64() * 1e3;
            let t = Instant::now();
            for i in 0..decode_tokens {
                llama.forward(&mut st, &prompt[i..i + 1], Logits::Last)?;
                b.synchronize()?;
            }
            let td = t.elapsed().as_secs_f64() * 1e3 / decode_tokens.max(1) as f64;
            if run > 0 {
                prefill.push(tp);
                decode.push(td);
            }
        }
        figures.push((prefill, decode));
    }
    let label = |a: bool| {
        if a {
            format!("unmerged LoRA r={rank} on all 7 projections")
        } else {
            "adapter off".to_string()
        }
    };
    let (base_p, base_d) = (median(&figures[0].0), median(&figures[0].1));
    for (i, (prefill, decode)) in figures.into_iter().enumerate() {
        let with = i == 1;
        let (pm, dm) = (median(&prefill), median(&decode));
        let pct = |v: f64, base: f64| if with { 100.0 * (v - base) / base } else { 0.0 };
        out.push(Record {
            part: "model-lora".into(),
            name: format!("{name} prefill {n} tokens, {}", label(with)),
            ms: pm,
            runs_ms: prefill,
            bytes: 0.0,
            flops: 0.0,
            extra: serde_json::json!({ "model": name, "overhead_pct": pct(pm, base_p) }),
        })?;
        out.push(Record {
            part: "model-lora".into(),
            name: format!("{name} decode per token, {}", label(with)),
            ms: dm,
            runs_ms: decode,
            bytes: 0.0,
            flops: 0.0,
            extra: serde_json::json!({ "model": name, "overhead_pct": pct(dm, base_d) }),
        })?;
    }
    Ok(())
}

fn lora(ordinal: usize, args: &GpuBenchOptions, out: &mut Out) -> Result<()> {
    let mut cfg = synthetic::preset("llama2-7b")?;
    if args.quick {
        cfg.n_layers = 1;
    }
    let b = CudaBackend::new(ordinal)?;
    let (d, h) = (cfg.dim, cfg.hidden_dim);
    // (out, in) of the 7 projections of a layer.
    let shapes = [
        (cfg.q_dim(), d),
        (cfg.kv_dim(), d),
        (cfg.kv_dim(), d),
        (d, cfg.q_dim()),
        (h, d),
        (h, d),
        (d, h),
    ];
    let rank = 16;
    let n_adapters = 4;
    let mut layers = Vec::new();
    for l in 0..cfg.n_layers {
        let mut projs = Vec::new();
        for (p, &(o, i)) in shapes.iter().enumerate() {
            let w = b.random_mat(o, i, (l * 10 + p) as u64, 1.0 / (i as f32).sqrt())?;
            let ads: Vec<LoraAdapter> = (0..n_adapters)
                .map(|a| b.lora_random(rank, i, o, 32.0, (l * 100 + p * 10 + a) as u64))
                .collect::<crate::engine::Result<_>>()?;
            projs.push((w, ads));
        }
        layers.push(projs);
    }
    b.synchronize()?;
    let row_counts: &[usize] = if args.quick { &[1, 5] } else { &[1, 16, 1024] };
    for &rows in row_counts {
        let mut x_d = b.alloc_bf16(rows * d.max(cfg.q_dim()))?;
        b.fill_uniform(&mut x_d, 1, 1.0, 0.0)?;
        let mut x_h = b.alloc_bf16(rows * h)?;
        b.fill_uniform(&mut x_h, 2, 1.0, 0.0)?;
        let mut y = b.alloc(rows * h.max(d))?;
        let per = rows.div_ceil(n_adapters);
        let run_all = |with_lora: bool, y: &mut CudaBuf| -> crate::engine::Result<()> {
            for projs in &layers {
                for (w, ads) in projs {
                    let x = if w.cols() == h { &x_h } else { &x_d };
                    b.linear(x, rows, w, None, y)?;
                    if with_lora {
                        let mut segs = Vec::new();
                        let mut left = rows;
                        for a in ads {
                            if left == 0 {
                                break;
                            }
                            let r = per.min(left);
                            segs.push(LoraSegment {
                                rows: r,
                                adapter: Some(a),
                            });
                            left -= r;
                        }
                        b.lora_apply(x, w, y, &segs)?;
                    }
                }
            }
            Ok(())
        };
        let base = time_kernel(&b, args.runs.min(5), |_| run_all(false, &mut y))?;
        let with = time_kernel(&b, args.runs.min(5), |_| run_all(true, &mut y))?;
        let (mb, mw) = (median(&base), median(&with));
        let proj_bytes: f64 = shapes
            .iter()
            .map(|&(o, i)| 2.0 * (o * i) as f64)
            .sum::<f64>()
            * cfg.n_layers as f64;
        let proj_flops: f64 = shapes
            .iter()
            .map(|&(o, i)| 2.0 * (o * i * rows) as f64)
            .sum::<f64>()
            * cfg.n_layers as f64;
        out.push(Record {
            part: "lora".into(),
            name: format!("7B projections, {rows} rows, merged (= base)"),
            ms: mb,
            runs_ms: base,
            bytes: proj_bytes,
            flops: proj_flops,
            extra: serde_json::json!({ "rows": rows }),
        })?;
        let lora_bytes: f64 = shapes
            .iter()
            .map(|&(o, i)| 2.0 * (rank * (o + i)) as f64)
            .sum::<f64>()
            * cfg.n_layers as f64
            * rows.min(n_adapters) as f64;
        out.push(Record {
            part: "lora".into(),
            name: format!(
                "7B projections, {rows} rows, unmerged r={rank} x{}",
                rows.min(n_adapters)
            ),
            ms: mw,
            runs_ms: with,
            bytes: proj_bytes + lora_bytes,
            flops: proj_flops * (1.0 + 2.0 * rank as f64 / 4096.0),
            extra: serde_json::json!({ "rows": rows, "overhead_pct": 100.0 * (mw - mb) / mb }),
        })?;
    }
    Ok(())
}
