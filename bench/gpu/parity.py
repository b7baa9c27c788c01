"""Our logits against HF transformers' on this machine's device, fp32 and bf16: the model
parity of tests/it/model_parity.rs, repeated where the tests cannot run (a GPU: SDPA kernels,
packing and the bf16 path are the device's own there).

    python3 bench/gpu/parity.py FT_LOGITS MODEL_DIR HEAD TOKDIR DEVICE

The batch: the parity test's three short MiniLM rows and the first 8 test reviews of TOKDIR
(our token shards), right-padded to the longest. HF runs BertForSequenceClassification (SDPA)
in fp32 and under bf16 autocast; ours runs `ft-logits` in fp32 and bf16. Prints one JSON object:
the largest |logit difference| of ours fp32, ours bf16 and HF's own bf16 from HF fp32.
"""
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import BertForSequenceClassification

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from shards import read_split  # noqa: E402

ft_logits, model_dir, head, tokdir, device = sys.argv[1:6]
golden = json.loads((Path(__file__).resolve().parents[2] / "tests/fixtures/parity/golden.json").read_text())["minilm"]
rows = [[t for t, m in zip(r, k) if m] for r, k in zip(golden["ids"], golden["mask"])]
rows += [ids.tolist() for ids in read_split(tokdir, "test")[0][:8]]
n = max(len(r) for r in rows)
ids = [r + [0] * (n - len(r)) for r in rows]
mask = [[1] * len(r) + [0] * (n - len(r)) for r in rows]

model = BertForSequenceClassification.from_pretrained(model_dir, num_labels=2, dtype=torch.float32, attn_implementation="sdpa")
missing = model.load_state_dict(load_file(head), strict=False)
assert not missing.unexpected_keys, missing.unexpected_keys
model.to(device).eval()
with torch.no_grad():
    x = {"input_ids": torch.tensor(ids, device=device), "attention_mask": torch.tensor(mask, device=device)}
    hf32 = model(**x).logits.float().cpu()
    with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16):
        hf16 = model(**x).logits.float().cpu()

with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
    json.dump({"ids": ids, "mask": mask}, f)
    f.flush()
    ours = {}
    for p in ["fp32", "bf16"]:
        out = subprocess.run([ft_logits, "--model", model_dir, "--head", head, "--batch", f.name, "--device", device, "--precision", p],
                             check=True, capture_output=True, text=True).stdout
        ours[p] = torch.tensor(json.loads(out)["logits"])


def gap(t):
    return float((t - hf32).abs().max())


print(json.dumps({"rows": len(rows), "len": n, "real_tokens": sum(map(len, rows)), "device": device,
                  "ours_fp32": gap(ours["fp32"]), "ours_bf16": gap(ours["bf16"]), "hf_bf16": gap(hf16),
                  "logit_scale": float(hf32.abs().max())}))
