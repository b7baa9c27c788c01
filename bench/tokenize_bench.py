"""Tokenization side by side on the same texts (issue 4): Python `tokenizers` encode_batch with
the same tokenizer.json and truncation, and HF `datasets.map(..., batched=True)` with
padding="max_length" as in the seed notebook. Our stage is timed by `cargo xtask bench` (the
whole ft-tokenize process); this script also checks that its ids equal encode_batch's.

    .venv/bin/python bench/tokenize_bench.py DOWNLOAD_ARTIFACT TOKENIZE_ARTIFACT MAX_LENGTH REPEATS

Prints one JSON object: seconds per repeat for each reference, and how many texts have
identical ids.
"""
import json
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
from tokenizers import Tokenizer

from shards import read_split

dl, tk, max_length, repeats = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
texts = pq.read_table(dl / "dataset/train.parquet").column("text").to_pylist()
tok = Tokenizer.from_file(str(dl / "model/tokenizer.json"))
tok.no_padding()
tok.enable_truncation(max_length=max_length)
encode_batch_s = []
for _ in range(repeats):
    t0 = time.perf_counter()
    enc = tok.encode_batch(texts)
    encode_batch_s.append(time.perf_counter() - t0)

import datasets  # noqa: E402 (after the encode_batch timing, so its import does not count)
from transformers import AutoTokenizer  # noqa: E402

datasets.disable_progress_bars()
hf_tok = AutoTokenizer.from_pretrained(str(dl / "model"))
ds = datasets.Dataset.from_dict({"text": texts})
datasets_map_s = []
for _ in range(repeats):
    t0 = time.perf_counter()
    ds.map(lambda b: hf_tok(b["text"], padding="max_length", truncation=True, max_length=max_length), batched=True, load_from_cache_file=False)
    datasets_map_s.append(time.perf_counter() - t0)

# Ids: ours (shards) against encode_batch.
ids = [a.tolist() for a in read_split(tk, "train")[0]]
same = sum(a == e.ids for a, e in zip(ids, enc))
print(json.dumps({"texts": len(texts), "ours_texts": len(ids), "max_length": max_length, "encode_batch_s": encode_batch_s,
                  "datasets_map_s": datasets_map_s, "identical_ids": same}))
