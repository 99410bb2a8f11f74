#!/usr/bin/env python3
"""Peer benchmark: Hugging Face transformers' LLaMA on PyTorch (CPU, f32 or bf16).

Measures with the protocol of `palr bench engine` (src/bench/engine.rs in the palr crate) and
prints the same JSON object, so the numbers sit side by side with palr's and candle's:

- load `config.json` + safetensors weights with
  `AutoModelForCausalLM.from_pretrained(dir, dtype=torch.float32)` (or `torch.bfloat16`
  with `--dtype bf16`: every weight and activation in bf16, oneDNN's AMX/AVX512-BF16
  kernels where the CPU has them; default attention implementation, which is `sdpa` for
  LLaMA; the report names the one in use);
- prompt = `--prompt-tokens` pseudo-random ids from the same xorshift64 generator and
  seed as palr (pinned below), so every engine sees the same ids;
- prefill: one forward pass over the prompt into a fresh `DynamicCache`, logits of the
  last position only (`logits_to_keep=1`, like palr), argmax -> `first_token`;
- decode: `--decode-tokens` single-token forward passes reusing that cache (the
  `cache` argument in transformers 5.x, `past_key_values` before), each feeding the
  previous argmax;
- batch 1, `torch.set_num_threads(--threads)` (0 = one per core), under
  `torch.inference_mode()`, `--warmup` untimed runs then `--runs` timed runs, medians
  reported; peak RSS is `ru_maxrss` of this process.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import resource
import statistics
import sys
import time

# The first ids of prompt_ids(n, 49152), pinned in src/bench/engine.rs's tests too.
PINNED_49152 = [3501, 8310, 8502, 19572, 35564]

MASK64 = (1 << 64) - 1

# --dtype values and the torch dtype each loads the weights as.
DTYPES = {"f32": "float32", "bf16": "bfloat16"}


def prompt_ids(n: int, vocab: int) -> list[int]:
    """palr's benchmark prompt: xorshift64 (13, 7, 17) from a fixed seed, mod vocab."""
    vocab = max(vocab, 1)
    seed = 0x9E3779B97F4A7C15
    out = []
    for _ in range(n):
        seed ^= (seed << 13) & MASK64
        seed ^= seed >> 7
        seed ^= (seed << 17) & MASK64
        out.append(seed % vocab)
    return out


def cores() -> int:
    """CPUs this process may run on (what Rust's available_parallelism reports)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="transformers/PyTorch LLaMA prefill/decode benchmark "
        "(palr bench engine protocol)"
    )
    p.add_argument("--model", required=True, help="Hugging Face model directory")
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--decode-tokens", type=int, default=64)
    p.add_argument("--dtype", default="f32", help="f32 or bf16")
    p.add_argument("--threads", type=int, default=0, help="0 = one per core")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    a = p.parse_args(argv)
    if a.runs < 1:
        p.error("--runs must be at least 1")
    if a.prompt_tokens < 1:
        p.error("--prompt-tokens must be at least 1")
    if a.decode_tokens < 0 or a.warmup < 0 or a.threads < 0:
        p.error("--decode-tokens, --warmup and --threads must not be negative")
    if a.dtype not in DTYPES:
        p.error(f"--dtype {a.dtype}: use f32 or bf16")
    if not os.path.isfile(os.path.join(a.model, "config.json")):
        p.error(f"--model {a.model}: no config.json there (expected a Hugging Face model directory)")
    return a


def peak_rss_mib() -> float:
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if prompt_ids(5, 49152) != PINNED_49152:
        raise SystemExit("prompt generator drifted from palr's (src/bench/engine.rs): fix prompt_ids")

    import torch
    import transformers
    from transformers import AutoModelForCausalLM, DynamicCache

    transformers.utils.logging.disable_progress_bar()

    threads = args.threads or cores()
    torch.set_num_threads(threads)

    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=getattr(torch, DTYPES[args.dtype]))
    model.eval()
    load_s = time.perf_counter() - t0
    config = model.config
    if args.prompt_tokens + args.decode_tokens > config.max_position_embeddings:
        raise SystemExit(
            f"--prompt-tokens + --decode-tokens = {args.prompt_tokens + args.decode_tokens} "
            f"exceeds the model's max_position_embeddings ({config.max_position_embeddings})"
        )
    attn = getattr(config, "_attn_implementation", None) or "unknown"

    ids = torch.tensor([prompt_ids(args.prompt_tokens, config.vocab_size)], dtype=torch.long)
    prefill, decode = [], []
    first_token = 0
    # transformers 5.x names the KV-cache argument and output `cache` (`past_key_values`
    # before, now deprecated); use whichever this version has.
    kv = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def step(x: torch.Tensor, cache: DynamicCache) -> tuple[int, DynamicCache]:
        out = model(x, use_cache=True, logits_to_keep=1, **{kv: cache})
        return int(out.logits[0, -1].argmax()), getattr(out, kv)

    with torch.inference_mode():
        for run in range(args.warmup + args.runs):
            cache = DynamicCache(config=config)
            t = time.perf_counter()
            nxt, cache = step(ids, cache)
            tp = time.perf_counter() - t
            first_token = nxt
            t = time.perf_counter()
            for _ in range(args.decode_tokens):
                nxt, cache = step(torch.tensor([[nxt]], dtype=torch.long), cache)
            td = time.perf_counter() - t
            if run >= args.warmup:
                prefill.append(tp)
                decode.append(td)

    report = {
        "engine": "torch",
        "backend": (
            f"torch {torch.__version__} cpu, transformers {transformers.__version__}, "
            f"attn={attn}, mkldnn={torch.backends.mkldnn.is_available()}, "
            f"cpu_capability={torch.backends.cpu.get_cpu_capability()}"
        ),
        "model": args.model,
        "dtype": args.dtype,
        "threads": threads,
        "prompt_tokens": args.prompt_tokens,
        "decode_tokens": args.decode_tokens,
        "load_s": load_s,
        "prefill_tok_s": args.prompt_tokens / statistics.median(prefill),
        "decode_tok_s": args.decode_tokens / max(statistics.median(decode), sys.float_info.min),
        "prefill_runs_s": prefill,
        "decode_runs_s": decode,
        "peak_rss_mib": peak_rss_mib(),
        "first_token": first_token,
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(f"engine   {report['engine']} on {report['backend']}")
        print(f"model    {report['model']} ({report['dtype']} weights)")
        print(f"load     {load_s:.2f} s")
        print(
            f"prefill  {report['prefill_tok_s']:.1f} tokens/s "
            f"({args.prompt_tokens} tokens, median of {len(prefill)})"
        )
        print(
            f"decode   {report['decode_tok_s']:.1f} tokens/s "
            f"({args.decode_tokens} tokens, median of {len(decode)})"
        )
        print(f"peak RSS {report['peak_rss_mib']:.0f} MiB")
        print(f"first    token {first_token}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
