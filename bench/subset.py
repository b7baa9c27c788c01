"""The benchmark's data subset, drawn the way a notebook draws one with `datasets`:
`split.shuffle(seed=SEED).select(range(N))`. So the accuracy figures are on the same reviews as
an HF Trainer run made that way (the train issue's reference: the first 2,000 reviews of a seeded
shuffle of IMDB train, 1,000 of test).

usage: subset.py DATASET_DIR OUT_DIR N SEED

DATASET_DIR: a download artifact's dataset/ (train.parquet and test.parquet in source order, no
validation carved). Writes OUT_DIR/{train,validation,test}.parquet: train the first N rows of the
shuffled train split, validation the next max(N // 10, 50) (disjoint from train), test the first
N // 2 of the shuffled test split. Prints the row counts as JSON.
"""
import json
import sys
from pathlib import Path

import datasets


def main():
    src, out, n, seed = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    ds = datasets.load_dataset("parquet", data_files={s: str(src / f"{s}.parquet") for s in ("train", "test")})
    train = ds["train"].shuffle(seed=seed)
    n_val = max(n // 10, 50)
    if n + n_val > len(train) or n // 2 > len(ds["test"]):
        sys.exit(f"subset.py: {n} train + {n_val} validation rows need more than the {len(train)} train rows, or {n // 2} test rows more than {len(ds['test'])}")
    parts = {
        "train": train.select(range(n)),
        "validation": train.select(range(n, n + n_val)),
        "test": ds["test"].shuffle(seed=seed).select(range(n // 2)),
    }
    out.mkdir(parents=True, exist_ok=True)
    for name, part in parts.items():
        part.to_parquet(str(out / f"{name}.parquet"))
    print(json.dumps({name: len(part) for name, part in parts.items()}))


if __name__ == "__main__":
    main()
