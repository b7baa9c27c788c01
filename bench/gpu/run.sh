#!/usr/bin/env bash
# GPU benchmark, run on the device machine from the repository root after bench/gpu/prepare.sh:
#   bash bench/gpu/run.sh            (results in $OUT, default /tmp/ft-out)
# 1. ours: all-MiniLM-L6-v2 on IMDB at 256, 3 epochs, bs128, lr 1e-4, bf16, bucketed; test accuracy
# 2. ours: bert-base shape (random init) at 128/bs128, 256/bs64, 512/bs32, fixed padding and bucketed
# 3. ours: roberta-base, distilbert-base and ModernBERT-base shapes (random init) at 512/bs32, fixed and bucketed
# 3b. ours: bert-base 128/bs128 fixed as one rank of a data-parallel run over NCCL
# 4. LoRA (train.lora: {}, lr 5e-4): the MiniLM IMDB run to test accuracy on its final weights,
#    and bert-base at 256/bs64 fixed (throughput)
# 5. HF Trainer on the same token ids: the same shapes (fixed), and the MiniLM IMDB run; with
#    peft's LoRA on the same modules (query, value; classifier and pooler saved) for the LoRA rows
#    (the IMDB shards' ids come from MiniLM's tokenizer and fit every family's vocabulary: only
#    the shapes matter for a throughput figure)
# Before them, bench/gpu/parity.py: our logits against HF's on the device, fp32 and bf16.
# Prints one table (bench/gpu/table.py) with each figure for both sides and the ratio.
#
# FT_DRY_RUN=1 runs the same sequence on CPU (batches of 2, 4 steps, the IMDB runs for 3 steps
# on the 128-token subset, the 256 runs on the 512-token subset; ours trains MiniLM in bf16 as
# on the GPU, so the bf16 code path runs too, and bert-base in fp32: bf16 matrix products are
# slow on a CPU without bf16 units, and 4 bert-base steps of 2 × 128 had not ended after 4
# minutes): a check of the script, not a measurement. Run it here before spending device time, with the project venv's python first on
# PATH: PATH=$PWD/.venv/bin:$PATH FT_DRY_RUN=1 bash bench/gpu/run.sh
set -u
cd "$(dirname "$0")/../.."
D=.device
W=/tmp/ft
OUT=${OUT:-/tmp/ft-out}
mkdir -p "$W" "$OUT"
R=$OUT/results.jsonl
: > "$R"
export LD_LIBRARY_PATH=$(python3 -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee "$OUT/gpu.txt"
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
record() {  # name, side, then a command whose last stdout line is one JSON object
  local name=$1 side=$2; shift 2
  echo "== $side $name" >&2
  if timeout "$LIMIT" "$@" > "$W/$side-$name.out" 2> "$OUT/$side-$name.err"; then
    tail -1 "$W/$side-$name.out" | python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); d["name"]=sys.argv[1]; d["side"]=sys.argv[2]; print(json.dumps(d))' "$name" "$side" >> "$R"
  else
    echo "{\"name\": \"$name\", \"side\": \"$side\", \"failed\": true}" >> "$R"; tail -5 "$OUT/$side-$name.err" >&2
  fi
}
ours() { local name=$1; shift; record "$name" ours "$D/bin/ft-bench" "$@"; }
hf() { local name=$1; shift; record "$name" hf python3 bench/hf_train.py "$@" --workers 2; }
if [ -n "${FT_DRY_RUN:-}" ]; then
  DEV=cpu PREC=bf16 BB_PREC=fp32 STEPS=4 WINDOW=1 IMDB_LEN=128 IMDB_RUN="max_steps: 3" HF_IMDB_RUN="--epochs 0.0006"
  BATCH() { echo 2; }
  TOK() { [ "$1" = 256 ] && echo 512 || echo "$1"; }  # tok256's 2,500 validation reviews take CPU minutes
  LIMIT=600
else
  DEV=cuda PREC=bf16 BB_PREC=bf16 STEPS=50 WINDOW=10 IMDB_LEN=256 IMDB_RUN="epochs: 3" HF_IMDB_RUN="--epochs 3"
  BATCH() { echo "$1"; }
  TOK() { echo "$1"; }
  LIMIT=150
fi
# First the model parity on this device (seconds): logits of ours and HF, fp32 and bf16.
record parity both python3 bench/gpu/parity.py "$D/bin/ft-logits" "$W/minilm" tests/fixtures/parity/minilm-classifier.safetensors "$W/tok$IMDB_LEN" "$DEV"
M=$(params minilm "device: $DEV" "precision: $PREC" "$IMDB_RUN" "learning_rate: 1.0e-4" "weight_decay: 0.01" "batch_size: $(BATCH 128)" "log_every_steps: 50")
ours minilm-imdb --model "$W/minilm" --tokens "$W/tok$IMDB_LEN" --params "$M" --out "$W/o-minilm" --eval-split test
ML=$(params minilm-lora "device: $DEV" "precision: $PREC" "$IMDB_RUN" "learning_rate: 5.0e-4" "weight_decay: 0.01" "batch_size: $(BATCH 128)" "log_every_steps: 50" "lora: {}")
ours minilm-imdb-lora --model "$W/minilm" --tokens "$W/tok$IMDB_LEN" --params "$ML" --out "$W/o-minilm-lora" --eval-split test --eval-weights final
PEFT="--lora --lora-targets query,value --lora-save classifier,pooler"
L=256; B=$(BATCH 64)
P=$(params bert-base-lora "device: $DEV" "precision: $BB_PREC" "init: random" "max_steps: $STEPS" "batch_size: $B" "padding: max_length" "log_every_steps: $WINDOW" "learning_rate: 5.0e-4" "lora: {}")
ours bert-base-$L-lora --model "$D/bert-base" --tokens "$W/tok$(TOK $L)" --params "$P" --out "$W/o-bert-base-lora"
hf bert-base-$L-lora throughput --config "$D/bert-base/config.json" --tokens "$W/tok$(TOK $L)" --batch "$B" --length "$L" --steps "$STEPS" --warmup $((STEPS / 5)) $PEFT
# Data-parallel over NCCL with one rank (the device has one GPU): bert-base 128/bs128 fixed, as
# the plain row below; on the CPU dry run the same path over Gloo.
P=$(params bert-base-128-nccl "device: $DEV" "precision: $BB_PREC" "init: random" "max_steps: $STEPS" "batch_size: $(BATCH 128)" "padding: max_length" "log_every_steps: $WINDOW" "learning_rate: 2.0e-5")
RANK=0 WORLD_SIZE=1 LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=29517 ours bert-base-128-nccl --model "$D/bert-base" --tokens "$W/tok$(TOK 128)" --params "$P" --out "$W/o-bert-base-128-nccl"
# Shape, length and batch of each throughput row (random init: the weights do not matter).
for spec in bert-base:128:128 bert-base:256:64 bert-base:512:32 roberta-base:512:32 distilbert-base-uncased:512:32 modernbert-base:512:32; do
  IFS=: read -r fam L B <<< "$spec"; B=$(BATCH "$B")
  for pad in max_length dynamic; do
    P=$(params "$fam-$L-$pad" "device: $DEV" "precision: $BB_PREC" "init: random" "max_steps: $STEPS" "batch_size: $B" "padding: $pad" "log_every_steps: $WINDOW" "learning_rate: 2.0e-5")
    ours "$fam-$L-$pad" --model "$D/$fam" --tokens "$W/tok$(TOK $L)" --params "$P" --out "$W/o-$fam-$L-$pad" $([ "$pad" = max_length ] && echo --ceiling)
  done
  hf "$fam-$L-max_length" throughput --config "$D/$fam/config.json" --tokens "$W/tok$(TOK $L)" --batch "$B" --length "$L" --steps "$STEPS" --warmup $((STEPS / 5))
done
hf minilm-imdb imdb --model "$W/minilm" --tokens "$W/tok$IMDB_LEN" --batch "$(BATCH 128)" --lr 1e-4 $HF_IMDB_RUN --length "$IMDB_LEN"
hf minilm-imdb-lora imdb --model "$W/minilm" --tokens "$W/tok$IMDB_LEN" --batch "$(BATCH 128)" --lr 5e-4 $HF_IMDB_RUN --length "$IMDB_LEN" $PEFT
python3 bench/gpu/table.py "$R" | tee "$OUT/table.md"
if [ -n "${FT_DRY_RUN:-}" ]; then echo "(FT_DRY_RUN: CPU, batches of 2 — a check of this script; the figures mean nothing)" | tee -a "$OUT/table.md"; fi
