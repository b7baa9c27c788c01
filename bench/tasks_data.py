"""The benchmark's task-kind data, made from the IMDB subset (bench/subset.py's output), so both
sides train on the same real text. Every cue a label depends on lies inside the text the model
sees at the bench's max_length of 128 tokens:

pairs/       a QNLI-like pair task (does the passage hold the answer to the question?):
             text = a quote of QUOTE consecutive words, text_pair = the first PASSAGE words of a
             review; label `holds` when the quote was cut from that passage, `lacks` when it was
             cut from another review's passage of the split (half and half). Only both texts
             together decide the label.
multilabel/  a multi-label task with independent cues on the first PASSAGE words of a review:
             `positive` (the review's sentiment), `acting` (acting, actors, cast, performance),
             `story` (story, plot, script), `funny` (funny, comedy, laughs, hilarious); a text may
             carry none.

usage: tasks_data.py SUBSET_DIR OUT_DIR SEED   (writes OUT_DIR/{pairs,multilabel}/{split}.parquet,
prints the row counts and each label's share of train as JSON)
"""
import json
import random
import re
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

PASSAGE = 70
QUOTE = 8
CUES = {
    "acting": r"\b(act(ing|ors?|ress(es)?)|cast|performances?)\b",
    "story": r"\b(story|stories|plot|script)\b",
    "funny": r"\b(funny|comed(y|ies)|laugh\w*|hilarious)\b",
}


def passage(text):
    return text.replace("<br />", " ").split()[:PASSAGE]


def quote(words, rng):
    start = rng.randrange(max(1, len(words) - QUOTE + 1))
    return " ".join(words[start:start + QUOTE])


def pairs(passages, rng):
    quotes, texts, labels = [], [], []
    for i, words in enumerate(passages):
        holds = rng.random() < 0.5
        if holds:
            q = quote(words, rng)
        else:
            # A quote from another passage, never one that happens to occur in this one.
            while True:
                q = quote(passages[rng.choice([k for k in range(len(passages)) if k != i])], rng)
                if q not in " ".join(words):
                    break
        quotes.append(q)
        texts.append(" ".join(words))
        labels.append("holds" if holds else "lacks")
    return {"text": quotes, "text_pair": texts, "label": labels}


def tags(words, sentiment):
    low = " ".join(words).lower()
    row = ["positive"] if sentiment == 1 else []
    row += [name for name, cue in CUES.items() if re.search(cue, low)]
    return row


def main():
    src, out, seed = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(seed)
    report = {}
    for split in ("train", "validation", "test"):
        t = pq.read_table(src / f"{split}.parquet").to_pydict()
        passages = [passage(x) for x in t["text"]]
        (out / "pairs").mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(pairs(passages, rng)), out / "pairs" / f"{split}.parquet")
        labels = [tags(w, y) for w, y in zip(passages, t["label"])]
        texts = [" ".join(w) for w in passages]
        (out / "multilabel").mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"text": texts, "label": labels}), out / "multilabel" / f"{split}.parquet")
        report[split] = len(texts)
        if split == "train":
            names = ["positive", *CUES]
            report["train_label_share"] = {n: round(sum(n in row for row in labels) / len(labels), 3) for n in names}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
