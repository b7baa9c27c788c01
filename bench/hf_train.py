"""The Python reference for training benchmarks: HF Trainer (bf16 on CUDA, SDPA) on the *same token
ids* as ours, read from our token shards (so tokenization is not part of the comparison).

  python3 hf_train.py throughput --config CONFIG.json --tokens TOKDIR --batch 32 --length 512 --steps 40
  python3 hf_train.py imdb --model MODELDIR --tokens TOKDIR --batch 128 --lr 1e-4 --epochs 3
  python3 hf_train.py imdb ... --lora [--lora-targets query,value --lora-save classifier,pooler]

Prints one JSON object. Throughput: samples/s over the steps after the first --warmup (fixed
shapes: every batch padded to --length). imdb: padding to max_length as the seed notebook does
(--dynamic: to each batch's longest row, as DataCollatorWithPadding), then Trainer.evaluate on
the test split (--eval-repeats times). Peak memory: the process's maximum RSS, and on CUDA
torch's peak allocation. --lora (either mode) wraps the model with peft's LoRA for sequence
classification (a frozen base, adapters on the targets, the saved modules trained in full).
imdb mode under --lora also reports the trainable parameters, the optimizer's state bytes (every tensor AdamW
keeps) and the bytes of a checkpoint of what trains (Trainer.save_model, which saves the adapter
under LoRA, plus the optimizer's state_dict as Trainer's optimizer.pt).
"""
import argparse
import json
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, Trainer, TrainerCallback, TrainingArguments

from shards import read_split


class Rows(torch.utils.data.Dataset):
    """Our examples as HF Trainer takes them: ids padded to `length`, the mask, token types for
    sentence pairs (None: the model gets none), and labels as the task's loss reads them (class
    ids; multi-hot floats; float scores)."""

    def __init__(self, ids, labels, length, pad, types=None):
        self.ids, self.labels, self.length, self.pad, self.types = ids, labels, length, pad, types

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        x = self.ids[i][: self.length]
        pad = self.length - len(x)
        y = self.labels[i]
        row = {
            "input_ids": torch.tensor(np.concatenate([x, np.full(pad, self.pad, dtype=np.int64)])),
            "attention_mask": torch.tensor([1] * len(x) + [0] * pad),
            "labels": torch.tensor(y) if isinstance(y, int) else torch.tensor(y, dtype=torch.float32),
        }
        if self.types is not None and self.types[i] is not None:
            t = self.types[i][: self.length]
            row["token_type_ids"] = torch.tensor(np.concatenate([t, np.zeros(pad, dtype=np.int64)]))
        return row


def task_of(labels):
    """num_labels and problem_type from our labels: class ids, multi-hot lists or scores."""
    if isinstance(labels[0], list):
        return len(labels[0]), "multi_label_classification"
    if isinstance(labels[0], float):
        return 1, "regression"
    return max(2, max(labels) + 1), "single_label_classification"


def token_types(types, config):
    """Token types reach the model where its tokenizer would hand them over: BERT-style models
    with a token type table of two rows or more."""
    return types if getattr(config, "type_vocab_size", 0) > 1 and config.model_type == "bert" else None


class StepTimer(TrainerCallback):
    def __init__(self):
        self.times = []

    def on_step_end(self, args, state, control, **kw):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())


def args_for(out, batch, workers, seed=42, **kw):
    return TrainingArguments(
        output_dir=out, per_device_train_batch_size=batch, per_device_eval_batch_size=256, bf16=torch.cuda.is_available(),
        save_strategy="no", eval_strategy="no", report_to=[], logging_steps=50, seed=seed, dataloader_num_workers=workers,
        disable_tqdm=True, **kw)


def adapt(model, a):
    """The model itself, or under --lora peft's LoRA model for SEQ_CLS over it."""
    if not a.lora:
        return model
    from peft import LoraConfig, TaskType, get_peft_model
    split = lambda s: [x for x in s.split(",") if x] if s else None
    cfg = LoraConfig(task_type=TaskType.SEQ_CLS, r=a.lora_r, lora_alpha=a.lora_alpha, lora_dropout=a.lora_dropout,
                     target_modules=split(a.lora_targets), modules_to_save=split(a.lora_save))
    return get_peft_model(model, cfg)


def sizes(tr, model, out):
    """Trainable parameters, optimizer state bytes and checkpoint bytes after training."""
    opt = getattr(tr.optimizer, "optimizer", tr.optimizer)
    state = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values() if torch.is_tensor(t))
    ck = Path(out) / "checkpoint"
    shutil.rmtree(ck, ignore_errors=True)
    tr.save_model(str(ck))
    torch.save(opt.state_dict(), ck / "optimizer.pt")
    ck_bytes = sum(f.stat().st_size for f in ck.rglob("*") if f.is_file())
    return {"trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "parameters": sum(p.numel() for p in model.parameters()),
            "optimizer_state_bytes": state, "checkpoint_bytes": ck_bytes}


def memory():
    return {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["throughput", "imdb"])
    ap.add_argument("--config")
    ap.add_argument("--model")
    ap.add_argument("--tokens", required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=10, help="steps left out of the throughput figure")
    ap.add_argument("--workers", type=int, default=0, help="dataloader workers (HF's default: 0)")
    ap.add_argument("--eval-repeats", type=int, default=1)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--epochs", type=float, default=3)
    ap.add_argument("--dynamic", action="store_true", help="pad each batch to its longest row (imdb mode)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--seed", type=int, default=42, help="Trainer seed (imdb mode)")
    ap.add_argument("--lora", action="store_true", help="train peft LoRA adapters over a frozen base")
    ap.add_argument("--lora-r", type=int, default=8)
    ap.add_argument("--lora-alpha", type=int, default=16)
    ap.add_argument("--lora-dropout", type=float, default=0.1)
    ap.add_argument("--lora-targets", help="comma-separated target_modules (default: peft's for the model type)")
    ap.add_argument("--lora-save", help="comma-separated modules_to_save (default: peft's for SEQ_CLS, the classifier)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    ids, labels, types = read_split(a.tokens, "train")
    num_labels, problem_type = task_of(labels)
    if a.mode == "throughput":
        cfg = AutoConfig.from_pretrained(a.config, num_labels=num_labels, problem_type=problem_type)
        cfg._attn_implementation = "sdpa"
        model = adapt(AutoModelForSequenceClassification.from_config(cfg), a)
        need = a.batch * a.steps
        reps = (need + len(ids) - 1) // len(ids)
        types = token_types(types, cfg)
        ds = Rows((ids * reps)[:need], (labels * reps)[:need], a.length, cfg.pad_token_id or 0, None if types is None else (types * reps)[:need])
        timer = StepTimer()
        tr = Trainer(model=model, args=args_for("/tmp/hf-bench", a.batch, a.workers, max_steps=a.steps, learning_rate=a.lr), train_dataset=ds, callbacks=[timer])
        tr.train()
        t = timer.times
        skip = a.warmup
        sps = (len(t) - 1 - skip) * a.batch / (t[-1] - t[skip])
        print(json.dumps({"mode": "throughput", "length": a.length, "batch": a.batch, "samples_per_s": sps, "tokens_per_s_padded": sps * a.length,
                          **memory()}))
    else:
        model = AutoModelForSequenceClassification.from_pretrained(a.model, num_labels=num_labels, problem_type=problem_type, dtype=torch.float32, attn_implementation="sdpa")
        config = model.config
        model = adapt(model, a)
        pad = config.pad_token_id or 0
        ds = Rows(ids, labels, a.length, pad, token_types(types, config))
        tids, tlab, ttypes = read_split(a.tokens, "test")
        test = Rows(tids, tlab, a.length, pad, token_types(ttypes, config))
        def metrics(p):
            if problem_type == "multi_label_classification":
                pred, y = p.predictions > 0, p.label_ids > 0.5
                tp = float((pred & y).sum())
                f1 = 2 * tp / max(1.0, float(pred.sum() + y.sum()))
                return {"accuracy": float((pred == y).all(-1).mean()), "f1_micro": f1}
            return {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())}
        collate = None
        if a.dynamic:
            def collate(rows):
                n = max(int(r["attention_mask"].sum()) for r in rows)
                return {k: torch.stack([r[k][:n] if r[k].dim() else r[k] for r in rows]) for k in rows[0]}
        tr = Trainer(model=model, args=args_for("/tmp/hf-imdb", a.batch, a.workers, num_train_epochs=a.epochs, learning_rate=a.lr, weight_decay=0.01, seed=a.seed),
                     train_dataset=ds, compute_metrics=metrics, data_collator=collate)
        t0 = time.perf_counter()
        out = tr.train()
        train_s = time.perf_counter() - t0
        train_peak = memory()["peak_rss_mb"]
        eval_s = []
        for _ in range(a.eval_repeats):
            t0 = time.perf_counter()
            ev = tr.evaluate(test)
            eval_s.append(time.perf_counter() - t0)
        print(json.dumps({"mode": "imdb", "lora": a.lora, **(sizes(tr, model, "/tmp/hf-imdb") if a.lora else {}), "train_seconds": train_s, "train_runtime": out.metrics.get("train_runtime"),
                          "samples_per_s": out.metrics.get("train_samples_per_second"), "test_accuracy": ev["eval_accuracy"],
                          "test_f1_micro": ev.get("eval_f1_micro"), "train_peak_rss_mb": train_peak,
                          "eval_seconds": eval_s[0], "eval_examples_per_s": len(test) / eval_s[0],
                          "eval_examples_per_s_runs": [len(test) / e for e in eval_s], **memory()}))


if __name__ == "__main__":
    sys.exit(main())
