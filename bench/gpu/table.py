"""Turns bench/gpu/run.sh's results.jsonl into one Markdown table: ours, HF, ratio."""
import json
import sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = {(r["side"], r["name"]): r for r in rows}


def get(side, name, *path):
    r = by.get((side, name))
    for p in path:
        if not isinstance(r, dict):
            return None
        r = r.get(p)
    return r


def fmt(x, d=1):
    return "-" if x is None else f"{x:.{d}f}"


print("| figure | ours | HF Trainer | ratio |")
print("|---|---|---|---|")
for fam, L, B in [("bert-base", 128, 128), ("bert-base", 256, 64), ("bert-base", 512, 32), ("roberta-base", 512, 32),
                  ("distilbert-base-uncased", 512, 32), ("modernbert-base", 512, 32)]:
    hf = get("hf", f"{fam}-{L}-max_length", "samples_per_s")
    for pad in ["max_length", "dynamic"]:
        o = get("ours", f"{fam}-{L}-{pad}", "steady_samples_per_s")
        label = "fixed" if pad == "max_length" else "bucketed"
        print(f"| {fam} {L}/bs{B} samples/s, ours {label} vs HF fixed | {fmt(o)} | {fmt(hf)} | {fmt(o / hf if o and hf else None, 2)}x |")
    c = get("ours", f"{fam}-{L}-max_length", "ceiling_samples_per_s")
    print(f"| {fam} {L}/bs{B} ceiling samples/s (model FLOPs at the measured rate of its matrix products) vs HF | {fmt(c)} | {fmt(hf)} | {fmt(c / hf if c and hf else None, 2)}x |")
o = get("ours", "minilm-imdb", "train", "train_seconds")
h = get("hf", "minilm-imdb", "train_seconds")
print(f"| MiniLM IMDB@256 3 epochs, training wall s (ours incl. validation) | {fmt(o)} | {fmt(h)} | {fmt(h / o if o and h else None, 2)}x faster |")
o = get("ours", "minilm-imdb", "train", "samples_per_second")
h = get("hf", "minilm-imdb", "samples_per_s")
print(f"| MiniLM IMDB@256 training samples/s | {fmt(o)} | {fmt(h)} | {fmt(o / h if o and h else None, 2)}x |")
o = get("ours", "minilm-imdb", "eval", "accuracy")
h = get("hf", "minilm-imdb", "test_accuracy")
print(f"| MiniLM IMDB test accuracy | {fmt(o and 100 * o, 2)}% | {fmt(h and 100 * h, 2)}% | |")
o = get("ours", "minilm-imdb", "eval", "examples_per_s")
h = get("hf", "minilm-imdb", "eval_examples_per_s")
print(f"| MiniLM evaluate 25k test, examples/s | {fmt(o, 0)} | {fmt(h, 0)} | {fmt(o / h if o and h else None, 2)}x |")
o = get("ours", "bert-base-256-lora", "steady_samples_per_s")
h = get("hf", "bert-base-256-lora", "samples_per_s")
print(f"| LoRA bert-base 256/bs64 samples/s, fixed, ours vs HF + peft | {fmt(o)} | {fmt(h)} | {fmt(o / h if o and h else None, 2)}x |")
o = get("ours", "minilm-imdb-lora", "train", "samples_per_second")
h = get("hf", "minilm-imdb-lora", "samples_per_s")
print(f"| LoRA MiniLM IMDB@256 training samples/s, ours vs HF + peft | {fmt(o)} | {fmt(h)} | {fmt(o / h if o and h else None, 2)}x |")
o = get("ours", "minilm-imdb-lora", "eval", "accuracy")
h = get("hf", "minilm-imdb-lora", "test_accuracy")
print(f"| LoRA MiniLM IMDB test accuracy (final weights) | {fmt(o and 100 * o, 2)}% | {fmt(h and 100 * h, 2)}% | |")
for key, what in [("optimizer_state_bytes", "optimizer state MiB"), ("checkpoint_bytes", "checkpoint MiB")]:
    o = get("ours", "minilm-imdb-lora", "train", key)
    h = get("hf", "minilm-imdb-lora", key)
    print(f"| LoRA MiniLM {what} | {fmt(o and o / 2**20)} | {fmt(h and h / 2**20)} | |")
o = get("ours", "bert-base-128-nccl", "steady_samples_per_s")
h = get("ours", "bert-base-128-max_length", "steady_samples_per_s")
d = get("ours", "bert-base-128-nccl", "train", "distributed") or {}
print(f"| bert-base 128/bs128 fixed samples/s, one {d.get('backend', '?')} rank vs one process (ours both) | {fmt(o)} | {fmt(h)} | {fmt(o / h if o and h else None, 2)}x |")
p = by.get(("both", "parity"), {})
if "ours_fp32" in p:
    print(f"\nModel parity on {p['device']} (all-MiniLM-L6-v2, {p['rows']} rows padded to {p['len']}, {p['real_tokens']} real tokens; "
          f"largest |logit - HF fp32 logit|, logits up to {p['logit_scale']:.3g}): ours fp32 {p['ours_fp32']:.2e}, "
          f"ours bf16 {p['ours_bf16']:.2e}, HF bf16 autocast {p['hf_bf16']:.2e}")
else:
    print("\nModel parity: failed (see both-parity.err)")
mfu = get("ours", "minilm-imdb", "train", "flop_utilisation")
print(f"\nours MiniLM: {json.dumps(mfu)}")
for L in [128, 256, 512]:
    print(f"ours bert-base {L} fixed: {json.dumps(get('ours', f'bert-base-{L}-max_length', 'train', 'flop_utilisation'))}")
