//! Peer benchmark: candle's LLaMA (`candle_transformers::models::llama`) on the CPU,
//! measured with the protocol of `palr bench engine` (src/bench/engine.rs in the palr crate)
//! and printing the same JSON object, so the numbers sit side by side.
//!
//! Protocol (kept identical to palr's on purpose; change both or neither):
//! - load `config.json` + `*.safetensors` from a Hugging Face model directory, f32 weights;
//! - prompt = `--prompt-tokens` pseudo-random token ids from the same xorshift64 generator
//!   and seed as palr, so both engines see the same ids;
//! - prefill: one forward pass over the whole prompt into an empty KV cache, logits of
//!   the last position only, argmax -> first generated token (`first_token`);
//! - decode: `--decode-tokens` single-token forward passes on top of the cache, each
//!   feeding the previous argmax;
//! - batch 1, `--threads` workers (0 = one per core), `--warmup` untimed runs then
//!   `--runs` timed runs, medians reported; peak RSS is the process's `VmHWM`.
//!
//! candle runs its CPU matmuls through `gemm` on rayon with the thread count it reads
//! from `RAYON_NUM_THREADS`, so this program sets that variable and rayon's global pool
//! to the same number before any work starts. Built with candle's default features: no
//! `mkl`/`accelerate`, no GPU backends.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::llama::{Cache, Llama, LlamaConfig};
use clap::Parser;
use serde::Serialize;

/// Same flags and defaults as `palr bench engine` (f32 only).
#[derive(Debug, Parser)]
#[command(about = "candle LLaMA prefill/decode benchmark (palr bench engine protocol)")]
struct Args {
    /// Hugging Face model directory (config.json + model.safetensors).
    #[arg(long)]
    model: PathBuf,
    /// Prompt length for the prefill measurement.
    #[arg(long, default_value_t = 512)]
    prompt_tokens: usize,
    /// Tokens generated one at a time for the decode measurement.
    #[arg(long, default_value_t = 64)]
    decode_tokens: usize,
    /// Weight element type in memory (only f32 is measured for candle).
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Worker threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Untimed runs first.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Timed runs (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Run the forward passes on rayon's global pool instead of candle's own CPU pool
    /// (`Device::with_context`, candle's recommended way; the default here).
    #[arg(long)]
    global_pool: bool,
}

/// Field for field the JSON object `palr bench engine --json` prints.
#[derive(Debug, Serialize)]
struct Report {
    engine: String,
    backend: String,
    model: String,
    dtype: String,
    threads: usize,
    prompt_tokens: usize,
    decode_tokens: usize,
    load_s: f64,
    prefill_tok_s: f64,
    decode_tok_s: f64,
    prefill_runs_s: Vec<f64>,
    decode_runs_s: Vec<f64>,
    peak_rss_mib: f64,
    first_token: u32,
}

/// The prompt palr's bench uses: xorshift64 (13, 7, 17) from a fixed seed, mod vocab.
fn prompt_ids(n: usize, vocab: u64) -> Vec<u32> {
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    (0..n)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % vocab) as u32
        })
        .collect()
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Peak resident set size in MiB (Linux `VmHWM`; 0 elsewhere).
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// Index of the largest logit (first one on ties, like palr's argmax).
fn argmax(logits: &Tensor) -> anyhow::Result<u32> {
    let v: Vec<f32> = logits.flatten_all()?.to_vec1()?;
    ensure!(!v.is_empty(), "the model returned no logits");
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    Ok(best as u32)
}

/// The model's safetensors files: `model.safetensors`, or every shard named in
/// `model.safetensors.index.json`.
fn weight_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&index).with_context(|| {
        format!(
            "{} has neither model.safetensors nor model.safetensors.index.json",
            dir.display()
        )
    })?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", index.display()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .with_context(|| format!("{} has no weight_map object", index.display()))?;
    let mut files: Vec<PathBuf> = map
        .values()
        .filter_map(|v| v.as_str())
        .map(|f| dir.join(f))
        .collect();
    files.sort();
    files.dedup();
    Ok(files)
}

/// Prefill and decode timings of every timed run, and the first generated token.
type Timings = (Vec<f64>, Vec<f64>, u32);

/// The timed loop: warm-up runs, then timed runs, each from an empty KV cache.
fn measure(
    args: &Args,
    model: &Llama,
    empty_cache: &Cache,
    input: &Tensor,
    device: &Device,
) -> anyhow::Result<Timings> {
    let (mut prefill, mut decode) = (Vec::new(), Vec::new());
    let mut first_token = 0;
    for run in 0..args.warmup + args.runs {
        let mut cache = empty_cache.clone();
        let t = Instant::now();
        let logits = model.forward(input, 0, &mut cache)?;
        let mut next = argmax(&logits)?;
        let tp = t.elapsed().as_secs_f64();
        first_token = next;
        let t = Instant::now();
        for i in 0..args.decode_tokens {
            let x = Tensor::new(&[next], device)?.unsqueeze(0)?;
            next = argmax(&model.forward(&x, args.prompt_tokens + i, &mut cache)?)?;
        }
        let td = t.elapsed().as_secs_f64();
        if run >= args.warmup {
            prefill.push(tp);
            decode.push(td);
        }
    }
    Ok((prefill, decode, first_token))
}

fn run(args: &Args, threads: usize) -> anyhow::Result<Report> {
    ensure!(args.runs > 0, "--runs must be at least 1");
    ensure!(args.prompt_tokens > 0, "--prompt-tokens must be at least 1");
    if args.dtype != "f32" {
        bail!(
            "--dtype {}: this harness measures candle in f32 only (use --dtype f32)",
            args.dtype
        );
    }
    let device = Device::Cpu;
    let t0 = Instant::now();
    let config_path = args.model.join("config.json");
    let config_text = std::fs::read_to_string(&config_path)
        .with_context(|| format!("cannot read {}", config_path.display()))?;
    let config: LlamaConfig = serde_json::from_str(&config_text)
        .with_context(|| format!("{} is not a LLaMA config", config_path.display()))?;
    let config = config.into_config(false);
    let capacity = args.prompt_tokens + args.decode_tokens;
    ensure!(
        capacity <= config.max_position_embeddings,
        "--prompt-tokens + --decode-tokens = {capacity} exceeds the model's \
         max_position_embeddings ({})",
        config.max_position_embeddings
    );
    let files = weight_files(&args.model)?;
    // SAFETY: the weight files are not modified while mapped (candle copies the
    // tensors into its own buffers during load; the map is dropped afterwards).
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&files, DType::F32, &device)? };
    let model = Llama::load(vb, &config).context("loading the LLaMA weights")?;
    // Rotary tables for every position are built here, once, outside the timings;
    // each run starts from a clone of this empty cache.
    let empty_cache = Cache::new(true, DType::F32, &config, &device)?;
    let load_s = t0.elapsed().as_secs_f64();

    let prompt = prompt_ids(args.prompt_tokens, config.vocab_size as u64);
    let input = Tensor::new(prompt.as_slice(), &device)?.unsqueeze(0)?;
    let timed = || measure(args, &model, &empty_cache, &input, &device);
    let (prefill, decode, first_token) = if args.global_pool {
        timed()?
    } else {
        device.with_context(timed)?
    };
    Ok(Report {
        engine: "candle".into(),
        backend: format!(
            "candle-core {} cpu ({} rayon pool, gemm, avx2={}, f16c={}, mkl={})",
            CANDLE_VERSION,
            if args.global_pool {
                "global"
            } else {
                "candle's"
            },
            candle_core::utils::with_avx(),
            candle_core::utils::with_f16c(),
            candle_core::utils::has_mkl(),
        ),
        model: args.model.display().to_string(),
        dtype: args.dtype.clone(),
        threads,
        prompt_tokens: args.prompt_tokens,
        decode_tokens: args.decode_tokens,
        load_s,
        prefill_tok_s: args.prompt_tokens as f64 / median(&prefill),
        decode_tok_s: args.decode_tokens as f64 / median(&decode).max(f64::MIN_POSITIVE),
        prefill_runs_s: prefill,
        decode_runs_s: decode,
        peak_rss_mib: peak_rss_mib(),
        first_token,
    })
}

/// The candle-core version this harness was built against (read from Cargo.lock by build.rs).
const CANDLE_VERSION: &str = env!("CANDLE_CORE_VERSION");

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let threads = if args.threads == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        args.threads
    };
    // candle's CPU matmul asks `RAYON_NUM_THREADS` how many threads to split over;
    // set it (before any other thread exists) and size rayon's pool to match.
    // SAFETY: single-threaded at this point: nothing else reads or writes the environment.
    unsafe { std::env::set_var("RAYON_NUM_THREADS", threads.to_string()) };
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .context("starting rayon's global thread pool")?;
    let report = run(&args, threads)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("engine   {} on {}", report.engine, report.backend);
        println!("model    {} ({} weights)", report.model, report.dtype);
        println!("load     {:.2} s", report.load_s);
        println!(
            "prefill  {:.1} tokens/s ({} tokens, median of {})",
            report.prefill_tok_s,
            report.prompt_tokens,
            report.prefill_runs_s.len()
        );
        println!(
            "decode   {:.1} tokens/s ({} tokens, median of {})",
            report.decode_tok_s,
            report.decode_tokens,
            report.decode_runs_s.len()
        );
        println!("peak RSS {:.0} MiB", report.peak_rss_mib);
        println!("first    token {}", report.first_token);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pinned in palr's src/bench/engine.rs and in torch_bench.py too: every engine must be
    /// fed the same prompt.
    #[test]
    fn prompt_matches_palr() {
        assert_eq!(prompt_ids(5, 49152), [3501, 8310, 8502, 19572, 35564]);
        assert!(prompt_ids(512, 49152).iter().all(|&t| t < 49152));
    }

    #[test]
    fn median_and_argmax() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        let t = Tensor::new(&[[0.5f32, 2.0, 2.0, -1.0]], &Device::Cpu).unwrap();
        assert_eq!(argmax(&t).unwrap(), 1);
    }

    #[test]
    fn missing_weights_are_named() {
        let dir = std::env::temp_dir().join(format!("candle-peer-empty-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let err = weight_files(&dir).unwrap_err().to_string();
        assert!(err.contains("model.safetensors"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
