"""A model directory with random weights at an encoder family's base shape, for `cargo xtask
bench --model FAMILY` where no pretrained weights are at hand: the benchmark times steps, which
do not depend on the weights' values.

    .venv/bin/python bench/random_model.py FAMILY OUT_DIR

FAMILY: bert (bert-base-uncased's shape), roberta (roberta-base), xlm-roberta (xlm-roberta-base),
distilbert (distilbert-base-uncased), modernbert (ModernBERT-base). The tokenizer is the family's
tiny test tokenizer (tests/fixtures/families; BERT's WordPiece for bert): the same ids go to both
sides, so only sequence lengths matter, and those are fixed by max_length on IMDB's long reviews.
Prints {"dir": ..., "parameters": N}.
"""
import json
import shutil
import sys
from pathlib import Path

import torch
from transformers import AutoModel, BertConfig, DistilBertConfig, ModernBertConfig, RobertaConfig, XLMRobertaConfig

FIX = Path(__file__).resolve().parent.parent / "tests/fixtures/families"
BASE = {
    "bert": (lambda: BertConfig(), "distilbert"),
    "roberta": (lambda: RobertaConfig(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5,
                                      pad_token_id=1, bos_token_id=0, eos_token_id=2), "roberta"),
    "xlm-roberta": (lambda: XLMRobertaConfig(vocab_size=250002, max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5,
                                             pad_token_id=1, bos_token_id=0, eos_token_id=2), "xlm-roberta"),
    "distilbert": (lambda: DistilBertConfig(), "distilbert"),
    "modernbert": (lambda: ModernBertConfig(), "modernbert"),
}


def main():
    family, out = sys.argv[1], Path(sys.argv[2])
    if family not in BASE:
        sys.exit(f"unknown family `{family}`; one of {', '.join(BASE)}")
    make, tokenizer_of = BASE[family]
    cfg = make()
    if family == "modernbert":
        # The tiny tokenizer's specials sit after its merges; point the config at them.
        tok = json.loads((FIX / "modernbert/tokenizer.json").read_text())
        ids = {t["content"]: t["id"] for t in tok["added_tokens"]}
        cfg.pad_token_id, cfg.cls_token_id, cfg.sep_token_id = ids["[PAD]"], ids["[CLS]"], ids["[SEP]"]
        cfg.bos_token_id, cfg.eos_token_id = ids["[CLS]"], ids["[SEP]"]
    torch.manual_seed(0)
    model = AutoModel.from_config(cfg)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    for f in ["tokenizer.json", "tokenizer_config.json"]:
        src = FIX / tokenizer_of / f
        if src.exists():
            shutil.copy(src, out / f)
    print(json.dumps({"dir": str(out), "parameters": sum(p.numel() for p in model.parameters())}))


if __name__ == "__main__":
    main()
