#!/usr/bin/env bash
# GPU benchmark, run on the device machine from the repository root after bench/gpu/prepare.sh:
#   bash bench/gpu/run.sh            (results in $OUT, default /tmp/ft-out)
# 1. ours: all-MiniLM-L6-v2 on IMDB at 256, 3 epochs, bs128, lr 1e-4, bf16, bucketed; test accuracy
# 2. ours: bert-base shape (random init) at 128/bs128, 256/bs64, 512/bs32, fixed padding and bucketed
# 3. HF Trainer on the same token ids: the same bert-base shapes (fixed), and the MiniLM IMDB run
# Prints one table (bench/gpu/table.py) with each figure for both sides and the ratio.
set -u
cd "$(dirname "$0")/../.."
D=.device
W=/tmp/ft
OUT=${OUT:-/tmp/ft-out}
mkdir -p "$W" "$OUT"
R=$OUT/results.jsonl
: > "$R"
export LD_LIBRARY_PATH=$(python3 -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)' | tee -a "$OUT/gpu.txt"
if [ ! -d "$W/tok256" ]; then
  python3 - "$D" "$W" <<'PY'
import lzma, shutil, sys, tarfile
from pathlib import Path
d, w = Path(sys.argv[1]), Path(sys.argv[2])
with tarfile.open(d / "toks.tar.xz") as t:
    t.extractall(w)
(w / "minilm").mkdir(exist_ok=True)
shutil.copy(d / "minilm/config.json", w / "minilm/config.json")
with lzma.open(d / "minilm/model.safetensors.xz") as src, open(w / "minilm/model.safetensors", "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
fi
params() {  # name, then yaml lines
  local f=$W/$1.yaml; shift; printf '%s\n' "$@" > "$f"; echo "$f"
}
ours() {  # name, ft-bench args...
  local name=$1; shift
  echo "== ours $name" >&2
  if timeout 150 "$D/bin/ft-bench" "$@" > "$W/$name.json" 2> "$OUT/$name.err"; then
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); d["name"]=sys.argv[2]; d["side"]="ours"; print(json.dumps(d))' "$W/$name.json" "$name" >> "$R"
  else
    echo "{\"name\": \"$name\", \"side\": \"ours\", \"failed\": true}" >> "$R"; tail -5 "$OUT/$name.err" >&2
  fi
}
hf() {  # name, hf_train.py args...
  local name=$1; shift
  echo "== hf $name" >&2
  if timeout 150 python3 bench/hf_train.py "$@" --workers 2 > "$W/hf-$name.out" 2> "$OUT/hf-$name.err"; then
    tail -1 "$W/hf-$name.out" | python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); d["name"]=sys.argv[1]; d["side"]="hf"; print(json.dumps(d))' "$name" >> "$R"
  else
    echo "{\"name\": \"$name\", \"side\": \"hf\", \"failed\": true}" >> "$R"; tail -5 "$OUT/hf-$name.err" >&2
  fi
}
M=$(params minilm "device: cuda" "precision: bf16" "epochs: 3" "learning_rate: 1.0e-4" "weight_decay: 0.01" "batch_size: 128" "log_every_steps: 50")
ours minilm-imdb --model "$W/minilm" --tokens "$W/tok256" --params "$M" --out "$W/o-minilm" --eval-split test
for lb in 128:128 256:64 512:32; do
  L=${lb%:*}; B=${lb#*:}
  for pad in max_length dynamic; do
    P=$(params "bb-$L-$pad" "device: cuda" "precision: bf16" "init: random" "max_steps: 50" "batch_size: $B" "padding: $pad" "log_every_steps: 10" "learning_rate: 2.0e-5")
    ours "bert-base-$L-$pad" --model "$D/bert-base" --tokens "$W/tok$L" --params "$P" --out "$W/o-bb-$L-$pad"
  done
  hf "bert-base-$L-max_length" throughput --config "$D/bert-base/config.json" --tokens "$W/tok$L" --batch "$B" --length "$L" --steps 50
done
hf minilm-imdb imdb --model "$W/minilm" --tokens "$W/tok256" --batch 128 --lr 1e-4 --epochs 3 --length 256
python3 bench/gpu/table.py "$R" | tee "$OUT/table.md"
