"""Tokenization side by side on the same texts (issue 4): Python `tokenizers` encode_batch with
the same tokenizer.json and truncation, and HF `datasets.map(..., batched=True)` with
padding="max_length" as in the seed notebook. Our stage is timed by `cargo xtask bench` (the
whole ft-tokenize process); this script also checks that its ids equal encode_batch's.

    .venv/bin/python bench/tokenize_bench.py DOWNLOAD_ARTIFACT TOKENIZE_ARTIFACT MAX_LENGTH REPEATS

Prints one JSON object: seconds per repeat for each reference, and how many texts have
identical ids.
"""
import json
import struct
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from tokenizers import Tokenizer

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

# Ids: ours (shards, crates/shards format) against encode_batch.
ids = []
for f in sorted(tk.glob("train-*.shard")):
    b = f.read_bytes()
    width, n, t = struct.unpack_from("<IQQ", b, 12)
    off = np.frombuffer(b, dtype="<u8", count=n + 1, offset=64)
    arr = np.frombuffer(b, dtype="<u2" if width == 2 else "<u4", count=t, offset=64 + 16 * n + 8)
    ids += [arr[off[i]:off[i + 1]].tolist() for i in range(n)]
same = sum(a == e.ids for a, e in zip(ids, enc))
print(json.dumps({"texts": len(texts), "ours_texts": len(ids), "max_length": max_length, "encode_batch_s": encode_batch_s,
                  "datasets_map_s": datasets_map_s, "identical_ids": same}))
