"""The predict section of `cargo xtask bench`: transformers' `pipeline("text-classification")`
beside ft-predict on the same reviews and the same classifier.

    .venv/bin/python bench/predict_bench.py prepare MODEL_DIR TEST.parquet N MAX_LENGTH SEED OUT_DIR
    .venv/bin/python bench/predict_bench.py time OUT_DIR BATCH REPEATS OURS.parquet MAX_LENGTH DTYPE DEVICE

`prepare` writes OUT_DIR/classifier (MODEL_DIR's encoder with a two-class head drawn from SEED:
what is timed does not depend on the head's values; the tokenizer's model_max_length set to
MAX_LENGTH) and OUT_DIR/reviews.parquet (the first N reviews of the test split, `text` only),
and prints the longest input the model takes. `time` runs the pipeline (DTYPE float32 or
bfloat16, on DEVICE) over those reviews REPEATS times with `truncation=True, max_length=MAX_LENGTH`
and BATCH rows per forward pass, and prints, as JSON, its examples/s per run (tokenization,
inference and post-processing; model loading left out, as ours leaves it out) and how many of its
labels ft-predict's output OURS.parquet agrees with.
"""
import json
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline


def prepare(model_dir, test, n, max_length, seed, out):
    out = Path(out)
    torch.manual_seed(int(seed))
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2, id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1})
    model.config.problem_type = "single_label_classification"
    model.save_pretrained(out / "classifier")
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.model_max_length = int(max_length)
    tok.save_pretrained(out / "classifier")
    texts = pq.read_table(test, columns=["text"]).column("text").to_pylist()[: int(n)]
    pq.write_table(pa.table({"text": texts}), out / "reviews.parquet")
    longest = model.config.max_position_embeddings - (model.config.pad_token_id + 1 if model.config.model_type in ("roberta", "xlm-roberta") else 0)
    print(json.dumps({"classifier": str(out / "classifier"), "reviews": len(texts), "model_max_length": longest}))


def timed(out, batch, repeats, ours, max_length, dtype, device):
    out = Path(out)
    texts = pq.read_table(out / "reviews.parquet").column("text").to_pylist()
    classify = pipeline("text-classification", model=str(out / "classifier"), device=device, dtype=getattr(torch, dtype))
    args = {"truncation": True, "max_length": int(max_length), "batch_size": int(batch)}
    classify(texts[:8], **args)  # warm-up
    rates, labels = [], None
    for _ in range(int(repeats)):
        t = time.perf_counter()
        labels = [r["label"] for r in classify(texts, **args)]
        rates.append(len(texts) / (time.perf_counter() - t))
    mine = pq.read_table(ours, columns=["predicted_label"]).column("predicted_label").to_pylist()
    same = sum(a == b for a, b in zip(labels, mine))
    print(json.dumps({"examples_per_s_runs": rates, "texts": len(texts), "same_labels": same, "ours_rows": len(mine)}))


if __name__ == "__main__":
    if sys.argv[1] == "prepare":
        prepare(*sys.argv[2:8])
    elif sys.argv[1] == "time":
        timed(*sys.argv[2:9])
    else:
        sys.exit("usage: predict_bench.py prepare|time ...")
