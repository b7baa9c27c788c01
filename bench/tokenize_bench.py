"""Tokenization side by side on the same texts (issue 4): Python `tokenizers` encode_batch with
the same tokenizer.json and truncation, HF `datasets.map(..., batched=True)` with
padding="max_length" as in the seed notebook (when `datasets` is importable), and our whole
tokenize stage (read parquet + encode + write shards), whose per-split seconds come from its
artifact's meta.json. Ids are compared too.

    .venv/bin/python bench/tokenize_bench.py DOWNLOAD_ARTIFACT TOKENIZE_ARTIFACT [MAX_LENGTH]
"""
import json
import struct
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from tokenizers import Tokenizer

dl, tk = Path(sys.argv[1]), Path(sys.argv[2])
max_length = int(sys.argv[3]) if len(sys.argv) > 3 else 512
texts = pq.read_table(dl / "dataset/train.parquet").column("text").to_pylist()
tok = Tokenizer.from_file(str(dl / "model/tokenizer.json"))
tok.no_padding()
tok.enable_truncation(max_length=max_length)
t0 = time.perf_counter()
enc = tok.encode_batch(texts)
encode_batch_s = time.perf_counter() - t0

datasets_map_s = None
try:
    import datasets
    from transformers import AutoTokenizer

    hf_tok = AutoTokenizer.from_pretrained(str(dl / "model"))
    ds = datasets.Dataset.from_dict({"text": texts})
    t0 = time.perf_counter()
    ds.map(lambda b: hf_tok(b["text"], padding="max_length", truncation=True, max_length=max_length), batched=True, load_from_cache_file=False)
    datasets_map_s = time.perf_counter() - t0
except ImportError:
    pass

meta = json.loads((tk / "meta.json").read_text())
ours_s = meta["splits"]["train"]["seconds"]
# Ids: compare ours (shards) with encode_batch.
ids = []
for f in sorted(tk.glob("train-*.shard")):
    b = f.read_bytes()
    width, n, t = struct.unpack_from("<IQQ", b, 12)
    off = np.frombuffer(b, dtype="<u8", count=n + 1, offset=64)
    arr = np.frombuffer(b, dtype="<u2" if width == 2 else "<u4", count=t, offset=64 + 16 * n + 8)
    ids += [arr[off[i]:off[i + 1]].tolist() for i in range(n)]
same = sum(a == e.ids for a, e in zip(ids, enc))
print(json.dumps({"texts": len(texts), "max_length": max_length, "encode_batch_s": encode_batch_s, "datasets_map_s": datasets_map_s,
                  "ours_stage_train_split_s": ours_s, "identical_ids": same, "ratio_vs_encode_batch": encode_batch_s / ours_s,
                  "ratio_vs_datasets_map": (datasets_map_s / ours_s) if datasets_map_s else None}))
