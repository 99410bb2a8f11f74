#!/usr/bin/env python3
"""Trains a LoRA adapter for palr's ranker on `palr sft-data` output (CPU or GPU).

    python3 scripts/training/train_lora.py --model models/smollm2-135m-instruct \
        --data sft/train.jsonl --out adapters/ml100k-score

Input: JSONL in the chat layout (`{"messages": [{"role": ..., "content": ...}, ...]}`) that
`palr sft-data` writes. Each example is rendered with the model's own chat template, exactly as
palr renders ranking prompts, and the loss covers only the assistant's reply (and its
end-of-turn token). Output: a PEFT adapter directory (`adapter_config.json`,
`adapter_model.safetensors`) that `palr serve`/`palr eval` load, plus `train_log.jsonl`
(loss per step), `train_summary.json` (data size, time, settings) and `loss.png`.
"""
import argparse
import json
import math
import os
import random
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="Hugging Face model directory")
    p.add_argument("--data", required=True, help="palr sft-data JSONL")
    p.add_argument("--out", required=True, help="adapter output directory")
    p.add_argument("--r", type=int, default=16)
    p.add_argument("--alpha", type=float, default=32)
    p.add_argument("--dropout", type=float, default=0.05)
    p.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=8, help="examples per optimizer step")
    p.add_argument("--micro-batch", type=int, default=4, help="examples per forward pass")
    p.add_argument("--max-examples", type=int, default=0, help="0 = all")
    p.add_argument("--max-len", type=int, default=1024, help="longer examples are skipped")
    p.add_argument("--warmup", type=float, default=0.05, help="fraction of steps")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = all cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=5)
    p.add_argument(
        "--time-budget",
        type=float,
        default=0,
        help="seconds of training (0 = none): the learning-rate schedule follows the larger of "
        "step and time progress, and training stops when the budget is spent",
    )
    p.add_argument(
        "--save-dtype",
        choices=["f32", "bf16"],
        default="f32",
        help="dtype of the saved adapter tensors (bf16 halves the file; palr widens on load)",
    )
    p.add_argument(
        "--bf16",
        action="store_true",
        help="autocast matmuls to bf16 (fast on GPUs and CPUs with AVX512-BF16/AMX); "
        "LoRA weights and optimizer state stay f32",
    )
    return p.parse_args()


def encode(tok, messages, max_len):
    """Token ids of the rendered conversation and the loss mask (assistant reply only)."""
    prompt = tok.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt):
        raise ValueError("chat template does not extend the prompt with the reply")
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    f_ids = tok(full, add_special_tokens=False)["input_ids"]
    if f_ids[: len(p_ids)] != p_ids or len(f_ids) > max_len:
        return None
    # The reply and its end-of-turn token; not the template's trailing newline.
    end = len(f_ids)
    eos = tok.convert_tokens_to_ids(tok.eos_token) if tok.eos_token else None
    while end > len(p_ids) and f_ids[end - 1] != eos:
        end -= 1
    if end == len(p_ids):
        end = len(f_ids)
    labels = [-100] * len(p_ids) + f_ids[len(p_ids):end] + [-100] * (len(f_ids) - end)
    return f_ids, labels


def cast_adapter(out, dtype):
    """Rewrites OUT/adapter_model.safetensors with its floating tensors in DTYPE ("bf16" or
    "f32"), keeping the file's metadata."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = Path(out) / "adapter_model.safetensors"
    want = {"bf16": torch.bfloat16, "f32": torch.float32}[dtype]
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tensors = {k: (v.to(want) if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}
    save_file(tensors, str(path), metadata=meta)


def main():
    a = parse_args()
    random.seed(a.seed)
    torch.manual_seed(a.seed)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    tok = AutoTokenizer.from_pretrained(a.model)
    rows = [json.loads(l) for l in open(a.data, encoding="utf-8") if l.strip()]
    random.shuffle(rows)
    if a.max_examples:
        rows = rows[: a.max_examples]
    data, skipped = [], 0
    for r in rows:
        e = encode(tok, r["messages"], a.max_len)
        if e is None:
            skipped += 1
        else:
            data.append(e)
    if not data:
        raise SystemExit("no usable examples (all longer than --max-len?)")
    n_tokens = sum(len(x[0]) for x in data)
    print(f"{len(data)} examples ({skipped} skipped), {n_tokens} tokens, device {device}")

    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32).to(device)
    cfg = LoraConfig(
        r=a.r,
        lora_alpha=a.alpha,
        lora_dropout=a.dropout,
        target_modules=a.targets.split(","),
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, cfg)
    model.print_trainable_parameters()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.0)
    steps = max(1, math.ceil(len(data) * a.epochs / a.batch_size))
    warm = max(1, int(steps * a.warmup))

    def lr_at(step, elapsed):
        # Linear warm-up over the first steps, then a cosine decay over the run's progress:
        # steps done, or the share of the time budget spent when that is further along.
        if step < warm:
            return a.lr * (step + 1) / warm
        progress = (step - warm) / max(1, steps - warm)
        if a.time_budget:
            progress = max(progress, elapsed / a.time_budget)
        return a.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    log = open(out / "train_log.jsonl", "w")
    order = []
    while len(order) < steps * a.batch_size:
        idx = list(range(len(data)))
        random.shuffle(idx)
        order += idx
    # The loss covers only the reply, a few tokens at the end of each example: run the
    # transformer on the whole sequence but the LM head (a fifth of the model's FLOPs
    # at this size, and a [batch, length, vocab] tensor) only where there are labels.
    inner = model.get_base_model()
    body, head = inner.model, inner.lm_head
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=a.bf16)
    t0 = time.time()
    model.train()
    losses = []
    stopped_by = "steps"
    examples_seen = 0
    for step in range(steps):
        elapsed = time.time() - t0
        if a.time_budget and elapsed >= a.time_budget:
            stopped_by = "time budget"
            break
        lr = lr_at(step, elapsed)
        for g in opt.param_groups:
            g["lr"] = lr
        batch = [data[i] for i in order[step * a.batch_size:(step + 1) * a.batch_size]]
        # Micro-batches of similar lengths pad less.
        batch.sort(key=lambda x: len(x[0]))
        examples_seen += len(batch)
        n_label = sum(sum(1 for t in lab if t != -100) for _, lab in batch)
        total = 0.0
        for m in range(0, len(batch), a.micro_batch):
            mb = batch[m:m + a.micro_batch]
            width = max(len(x) for x, _ in mb)
            ids = torch.full((len(mb), width), pad, dtype=torch.long)
            lab = torch.full((len(mb), width), -100, dtype=torch.long)
            att = torch.zeros((len(mb), width), dtype=torch.long)
            for j, (x, y) in enumerate(mb):
                ids[j, : len(x)] = torch.tensor(x)
                lab[j, : len(y)] = torch.tensor(y)
                att[j, : len(x)] = 1
            ids, lab, att = ids.to(device), lab.to(device), att.to(device)
            # Position t predicts token t+1: keep the positions whose next token is a label.
            tgt = lab[:, 1:]
            keep = tgt != -100
            with autocast:
                hidden = body(input_ids=ids, attention_mask=att).last_hidden_state[:, :-1]
                logits = head(hidden[keep])
            loss = torch.nn.functional.cross_entropy(
                logits.float(), tgt[keep], reduction="sum"
            ) / max(1, n_label)
            loss.backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(total)
        if step % a.log_every == 0 or step == steps - 1:
            el = time.time() - t0
            rec = {"step": step + 1, "steps": steps, "loss": total, "lr": lr, "elapsed_s": round(el, 1)}
            log.write(json.dumps(rec) + "\n")
            log.flush()
            eta = el / (step + 1) * (steps - step - 1)
            if a.time_budget:
                eta = min(eta, max(0.0, a.time_budget - el))
            print(f"step {step + 1}/{steps} loss {total:.4f} lr {lr:.2e} elapsed {el:.0f}s eta {eta:.0f}s", flush=True)

    if not losses:
        raise SystemExit("the time budget ended before the first step")
    model.save_pretrained(out, safe_serialization=True)
    if a.save_dtype != "f32":
        cast_adapter(out, a.save_dtype)
    readme = out / "README.md"
    if readme.exists():
        readme.unlink()  # PEFT's model-card stub; the summary below is the record.
    summary = {
        "model": str(a.model),
        "data": str(a.data),
        "examples": len(data),
        "skipped": skipped,
        "tokens": n_tokens,
        "steps_planned": steps,
        "steps": len(losses),
        "examples_seen": examples_seen,
        "stopped_by": stopped_by,
        "time_budget_s": a.time_budget,
        "bf16_autocast": a.bf16,
        "save_dtype": a.save_dtype,
        "batch_size": a.batch_size,
        "epochs": a.epochs,
        "lr": a.lr,
        "r": a.r,
        "alpha": a.alpha,
        "dropout": a.dropout,
        "targets": a.targets,
        "device": device,
        "threads": torch.get_num_threads(),
        "train_time_s": round(time.time() - t0, 1),
        "first_loss": losses[0],
        "final_loss_avg_last_10": sum(losses[-10:]) / len(losses[-10:]),
        "torch": torch.__version__,
        "seed": a.seed,
    }
    (out / "train_summary.json").write_text(json.dumps(summary, indent=1))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        k = max(1, len(losses) // 50)
        smooth = [sum(losses[max(0, i - k):i + 1]) / len(losses[max(0, i - k):i + 1]) for i in range(len(losses))]
        plt.figure(figsize=(6, 3.5))
        plt.plot(range(1, len(losses) + 1), losses, alpha=0.3, label="loss per step")
        plt.plot(range(1, len(losses) + 1), smooth, label=f"moving average ({k + 1} steps)")
        plt.xlabel("optimizer step")
        plt.ylabel("loss (assistant tokens)")
        plt.legend()
        plt.tight_layout()
        plt.savefig(out / "loss.png", dpi=120)
    except ImportError:
        print("matplotlib not installed: no loss.png")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
