"""The benchmark's task-kind data, made from the IMDB subset (bench/subset.py's output), so both
sides train on the same real text:

pairs/       a GLUE-like pair task (as QNLI or MRPC ask whether two texts belong together):
             text = the first half of a review, text_pair = the second half of the same review
             (label `same`) or of another review of the split (`different`), half and half.
multilabel/  a multi-label task with independent cues: `positive` (the review's sentiment),
             `long` (more than 230 words), `acting` (mentions acting or actors), `music`
             (mentions music, a score or songs); a review may carry none.

usage: tasks_data.py SUBSET_DIR OUT_DIR SEED   (writes OUT_DIR/{pairs,multilabel}/{split}.parquet,
prints the row counts as JSON)
"""
import json
import random
import re
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def halves(text):
    words = text.split()
    cut = len(words) // 2
    return " ".join(words[:cut]), " ".join(words[cut:])


def main():
    src, out, seed = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(seed)
    counts = {}
    for split in ("train", "validation", "test"):
        t = pq.read_table(src / f"{split}.parquet").to_pydict()
        texts, labels = t["text"], t["label"]
        first, second, same = [], [], []
        parts = [halves(x) for x in texts]
        for i, (a, b) in enumerate(parts):
            keep = rng.random() < 0.5
            j = i if keep else rng.choice([k for k in range(len(parts)) if k != i])
            first.append(a)
            second.append(parts[j][1])
            same.append("same" if keep else "different")
        (out / "pairs").mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"text": first, "text_pair": second, "label": same}), out / "pairs" / f"{split}.parquet")
        tags = []
        for x, y in zip(texts, labels):
            low = x.lower()
            row = ["positive"] if y == 1 else []
            if len(x.split()) > 230:
                row.append("long")
            if re.search(r"\bact(ing|or|ors|ress)\b", low):
                row.append("acting")
            if re.search(r"\b(music|score|songs?)\b", low):
                row.append("music")
            tags.append(row)
        (out / "multilabel").mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"text": texts, "label": tags}), out / "multilabel" / f"{split}.parquet")
        counts[split] = len(texts)
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
