//! `palr bench engine`: prefill and decode throughput of the engine on one model.
//!
//! Prefill: one forward pass over an N-token prompt into an empty cache (tokens/s).
//! Decode: M single-token steps on top of that prompt, each producing the last
//! position's logits (tokens/s). Both are medians over repeated runs after warm-up
//! runs. The prompt is a fixed pseudo-random sequence of token ids (speed does not
//! depend on which tokens they are). Peak RSS is the process's high-water mark.

use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use super::stats::median;
use super::{Result, ensure, peak_rss_mib};
use crate::engine::{self, Device, LoadOptions, Logits, WeightDtype};

/// What `palr bench engine` measures.
#[derive(Debug, Clone)]
pub struct EngineBenchOptions {
    /// Hugging Face model directory.
    pub model: PathBuf,
    /// Prompt length for the prefill measurement.
    pub prompt_tokens: usize,
    /// Tokens generated one at a time for the decode measurement.
    pub decode_tokens: usize,
    /// Where the model runs (a GPU needs bf16 weights).
    pub device: Device,
    /// Weight element type in memory.
    pub dtype: WeightDtype,
    /// Worker threads (0 = one per core).
    pub threads: usize,
    /// Untimed runs first.
    pub warmup: usize,
    /// Timed runs (the median is reported).
    pub runs: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct EngineBenchReport {
    pub engine: String,
    pub backend: String,
    pub model: String,
    pub dtype: String,
    pub threads: usize,
    pub prompt_tokens: usize,
    pub decode_tokens: usize,
    pub load_s: f64,
    pub prefill_tok_s: f64,
    pub decode_tok_s: f64,
    pub prefill_runs_s: Vec<f64>,
    pub decode_runs_s: Vec<f64>,
    pub peak_rss_mib: f64,
    /// Argmax token after the prefill (the first generated token): a cross-engine
    /// sanity check, as peers fed the same ids must pick the same token.
    pub first_token: u32,
}

/// The benchmark's prompt: `n` token ids from xorshift64 (shifts 13, 7, 17) with a
/// fixed seed, each taken modulo `vocab`. The peer harnesses in benchmarks/peers/
/// copy this generator so every engine is fed the same ids; the test below pins
/// its output, so change those copies together with it.
pub fn prompt_ids(n: usize, vocab: usize) -> Vec<u32> {
    let vocab = vocab.max(1) as u64;
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

/// Runs the benchmark.
pub fn run(args: &EngineBenchOptions) -> Result<EngineBenchReport> {
    ensure(args.runs > 0, || "--runs must be at least 1".into())?;
    ensure(args.prompt_tokens > 0, || {
        "--prompt-tokens must be at least 1".into()
    })?;
    let t0 = Instant::now();
    let opts = LoadOptions {
        device: args.device,
        dtype: args.dtype,
        threads: args.threads,
        max_batch_rows: args.prompt_tokens,
        ..LoadOptions::default()
    };
    let model = engine::load(&args.model, &opts)?;
    let load_s = t0.elapsed().as_secs_f64();
    let prompt = prompt_ids(args.prompt_tokens, model.config().vocab_size);
    let capacity = args.prompt_tokens + args.decode_tokens;
    let mut session = model.clone().new_session(capacity)?;
    let (mut prefill, mut decode) = (Vec::new(), Vec::new());
    let mut first_token = 0;
    for run in 0..args.warmup + args.runs {
        session.truncate(0)?;
        let t = Instant::now();
        let logits = session.feed(&prompt, Logits::Last)?;
        let mut next = argmax(logits);
        let tp = t.elapsed().as_secs_f64();
        first_token = next;
        let t = Instant::now();
        for _ in 0..args.decode_tokens {
            next = argmax(session.feed(&[next], Logits::Last)?);
        }
        let td = t.elapsed().as_secs_f64();
        if run >= args.warmup {
            prefill.push(tp);
            decode.push(td);
        }
    }
    Ok(EngineBenchReport {
        engine: "palr".into(),
        backend: model.describe(),
        model: args.model.display().to_string(),
        dtype: args.dtype.to_string(),
        threads: if args.threads == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            args.threads
        },
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

fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in x.iter().enumerate() {
        if *v > x[best] {
            best = i;
        }
    }
    best as u32
}

impl EngineBenchReport {
    pub fn print_table(&self) {
        println!("engine   {} on {}", self.engine, self.backend);
        println!("model    {} ({} weights)", self.model, self.dtype);
        println!("load     {:.2} s", self.load_s);
        println!(
            "prefill  {:.1} tokens/s ({} tokens, median of {})",
            self.prefill_tok_s,
            self.prompt_tokens,
            self.prefill_runs_s.len()
        );
        println!(
            "decode   {:.1} tokens/s ({} tokens, median of {})",
            self.decode_tok_s,
            self.decode_tokens,
            self.decode_runs_s.len()
        );
        println!("peak RSS {:.0} MiB", self.peak_rss_mib);
        println!("first    token {} (argmax after prefill)", self.first_token);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The peers (benchmarks/peers/candle, benchmarks/peers/torch_bench.py) pin the
    /// same ids: all three must feed identical prompts.
    #[test]
    fn prompt_ids_are_pinned() {
        assert_eq!(prompt_ids(5, 49152), PINNED);
        let long = prompt_ids(512, 49152);
        assert_eq!(&long[..5], PINNED);
        assert!(long.iter().all(|&t| t < 49152));
        assert!(prompt_ids(3, 7).iter().all(|&t| t < 7));
        assert!(prompt_ids(4, 0).iter().all(|&t| t == 0));
    }
    const PINNED: &[u32] = &[3501, 8310, 8502, 19572, 35564];
}
