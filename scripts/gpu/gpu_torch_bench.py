#!/usr/bin/env python3
"""PyTorch baselines for `palr bench gpu`, on the same card in the same run.

The same figures as palr's, for the same shapes and under the same names, so
scripts/gpu/gpu_report.py can put them side by side:
  ceilings   1 GiB device-to-device copy; 8192^3 bf16 matmul (random data)
  attention  torch.nn.functional.scaled_dot_product_attention, causal prefill
             (seq 512..4096) and one-row decode over seq cached positions,
             32 heads, head dim 64 and 128, bf16, layout (batch, heads, seq, dim)
  model      Hugging Face transformers LlamaForCausalLM (SDPA attention) with
             random bf16 weights of the SmolLM2-135M and LLaMA-2-7B shapes:
             prefill of --prompt-tokens tokens, then decode with the KV cache,
             each call ending in a copy of the last logits to the host (as palr's
             feed does)
Kernel figures are timed with CUDA events (median of --runs after a warm-up);
inputs are rotated among copies when one copy would fit in L2. Writes one JSON
object per figure to --json (palr's record fields). Runs on the GPU machine's
python3 (PyTorch, transformers); installs nothing.
"""
import argparse
import json
import traceback
import math
import statistics
import sys
import time

import torch

BF16 = torch.bfloat16

# Hugging Face config.json fields of the two shapes (as src/engine/cuda/synthetic.rs).
CONFIGS = {
    "smollm2-135m": dict(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, head_dim=64, rms_norm_eps=1e-5,
        rope_theta=100000.0, max_position_embeddings=8192, vocab_size=49152,
        tie_word_embeddings=True),
    "llama2-7b": dict(
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=32, rms_norm_eps=1e-5,
        rope_theta=10000.0, max_position_embeddings=4096, vocab_size=32000,
        tie_word_embeddings=False),
}


class Out:
    def __init__(self, path):
        self.f = open(path, "a") if path else None

    def push(self, part, name, runs_ms, nbytes, flops, extra=None):
        rec = dict(part=part, name=name, ms=statistics.median(runs_ms), runs_ms=runs_ms,
                   bytes=float(nbytes), flops=float(flops), extra=extra or {})
        print(f"{part:<10} {name:<44} {rec['ms']:>10.4f} ms  {json.dumps(rec['extra'])}", flush=True)
        if self.f:
            self.f.write(json.dumps(rec) + "\n")
            self.f.flush()


def timed(fn, runs):
    """CUDA-event milliseconds of fn(i) for i in 1..runs, after fn(0) as warm-up."""
    fn(0)
    torch.cuda.synchronize()
    out = []
    for i in range(1, runs + 1):
        s = torch.cuda.Event(enable_timing=True)
        e = torch.cuda.Event(enable_timing=True)
        s.record()
        fn(i)
        e.record()
        e.synchronize()
        out.append(s.elapsed_time(e))
    return out


def copies_for(nbytes, l2):
    return max(1, min(16, math.ceil(4 * l2 / max(nbytes, 1))))


def rand(*shape):
    return torch.empty(*shape, dtype=BF16, device="cuda").uniform_(-1.0, 1.0)


def ceilings(out, runs):
    n = 1 << 30
    src = rand(n // 2)
    dst = torch.empty_like(src)
    t = timed(lambda i: dst.copy_(src), runs)
    m = statistics.median(t)
    out.push("ceilings", "copy 1 GiB device to device", t, 2 * n, 0, {"tb_s": 2 * n / (m * 1e-3) / 1e12})
    del src, dst
    k = 8192
    a, b = rand(k, k), rand(k, k)
    t = timed(lambda i: torch.matmul(a, b), runs)
    m = statistics.median(t)
    flops = 2.0 * k ** 3
    out.push("ceilings", "bf16 matmul 8192x8192x8192 (cuBLAS)", t, 3 * 2 * k * k, flops,
             {"tflop_s": flops / (m * 1e-3) / 1e12})


def attention(out, runs, l2):
    sdpa = torch.nn.functional.scaled_dot_product_attention
    heads = 32
    for hd in (64, 128):
        for seq in (512, 1024, 2048, 4096):
            qn = seq * heads * hd
            nbytes = 4 * 2 * qn
            sets = copies_for(nbytes, l2)
            xs = [(rand(1, heads, seq, hd), rand(1, heads, seq, hd), rand(1, heads, seq, hd)) for _ in range(sets)]
            t = timed(lambda i: sdpa(*xs[i % sets], is_causal=True), runs)
            pairs = seq * (seq + 1) / 2
            out.push("attention", f"prefill causal seq {seq} hd {hd}", t, nbytes, 4 * pairs * hd * heads,
                     {"seq": seq, "head_dim": hd, "heads": heads, "kernel": "torch SDPA"})
            del xs
            nbytes = 2 * 2 * qn + 2 * 2 * heads * hd
            sets = copies_for(nbytes, l2)
            xs = [(rand(1, heads, 1, hd), rand(1, heads, seq, hd), rand(1, heads, seq, hd)) for _ in range(sets)]
            t = timed(lambda i: sdpa(*xs[i % sets]), max(runs, 20))
            out.push("attention", f"decode 1 row over {seq} hd {hd}", t, nbytes, 4 * seq * hd * heads,
                     {"seq": seq, "head_dim": hd, "heads": heads, "kernel": "torch SDPA"})
            del xs


def model(out, name, prompt_tokens, decode_tokens, runs):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**CONFIGS[name], attn_implementation="sdpa")
    t0 = time.perf_counter()
    torch.set_default_dtype(BF16)
    try:
        with torch.device("cuda"):
            m = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(torch.float32)
    m.eval()
    torch.cuda.synchronize()
    print(f"{name}: transformers model with random bf16 weights built on the GPU in {time.perf_counter() - t0:.1f} s",
          flush=True)
    g = torch.Generator(device="cuda").manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (1, prompt_tokens), device="cuda", generator=g)

    def forward(x, past=None):
        try:
            return m(input_ids=x, past_key_values=past, use_cache=True, logits_to_keep=1)
        except TypeError:  # older transformers
            return m(input_ids=x, past_key_values=past, use_cache=True)

    prefill, decode = [], []
    with torch.inference_mode():
        for run in range(min(runs, 5) + 1):
            torch.cuda.synchronize()
            t = time.perf_counter()
            o = forward(ids)
            o.logits[:, -1].float().cpu()
            tp = (time.perf_counter() - t) * 1e3
            past = o.past_key_values
            t = time.perf_counter()
            for i in range(decode_tokens):
                o = forward(ids[:, i % prompt_tokens:i % prompt_tokens + 1], past)
                past = o.past_key_values
                o.logits[:, -1].float().cpu()
            td = (time.perf_counter() - t) * 1e3 / max(decode_tokens, 1)
            if run > 0:
                prefill.append(tp)
                decode.append(td)
            del o, past
    n = prompt_tokens
    out.push("model", f"{name} prefill {n} tokens", prefill, 0, 0,
             {"tokens_s": n / (statistics.median(prefill) * 1e-3), "model": name, "engine": "transformers"})
    out.push("model", f"{name} decode (per token, after {n})", decode, 0, 0,
             {"tokens_s": 1e3 / statistics.median(decode), "model": name, "engine": "transformers"})
    del m
    torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json")
    ap.add_argument("--parts", default="ceilings,attention,model")
    ap.add_argument("--models", default="smollm2-135m,llama2-7b")
    ap.add_argument("--prompt-tokens", type=int, default=1024)
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--runs", type=int, default=10)
    a = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("error: PyTorch sees no CUDA device")
    props = torch.cuda.get_device_properties(0)
    l2 = getattr(props, "L2_cache_size", 50 << 20)
    print(f"device: {props.name}, {props.multi_processor_count} SMs, L2 {l2 >> 20} MiB, "
          f"torch {torch.__version__}", flush=True)
    torch.backends.cuda.matmul.allow_tf32 = False
    out = Out(a.json)
    parts = a.parts.split(",")
    failed = 0

    def attempt(what, fn, *args):
        # One part failing (an API change, memory) must not cost the others.
        nonlocal failed
        try:
            fn(*args)
        except Exception:
            failed += 1
            print(f"error in {what}:", file=sys.stderr)
            traceback.print_exc()
            torch.cuda.empty_cache()

    if "ceilings" in parts:
        attempt("ceilings", ceilings, out, a.runs)
    if "attention" in parts:
        attempt("attention", attention, out, a.runs, l2)
    if "model" in parts:
        for name in a.models.split(","):
            attempt(f"model {name}", model, out, name, a.prompt_tokens, a.decode_tokens, a.runs)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
