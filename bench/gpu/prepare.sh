#!/usr/bin/env bash
# Prepares .device/ (git-ignored) for bench/gpu/run.sh on a GPU machine that has python3 with
# torch and transformers but no Rust and no network: the ft-bench and ft-logits binaries, all-MiniLM-L6-v2 in bf16
# (xz), and token shards of IMDB at 256 (full) and at 128/512 (8,000 train reviews), all from the
# offline mirror served by ../shared/hub/serve.py. Keeps the carried size under 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/../.."
MIRROR=../shared/hub-mirror
rm -f /tmp/ft-hub.port
python3 ../shared/hub/serve.py "$MIRROR" --port-file /tmp/ft-hub.port 2>/tmp/ft-hub.log & HUB=$!
trap 'kill $HUB' EXIT
while [ ! -s /tmp/ft-hub.port ]; do sleep 0.1; done
export HF_ENDPOINT=http://127.0.0.1:$(cat /tmp/ft-hub.port) HF_HOME=${HF_HOME:-/tmp/ft-hf-home}
tok() {  # pipeline -> tokenize artifact dir
  cargo xtask run "$1" --only download >&2
  cargo xtask run "$1" --only tokenize --json 2>/dev/null | python3 -c 'import json,sys; print(json.loads(sys.stdin.read().splitlines()[-1])["artifact"])'
}
mk() {  # length -> a subset pipeline
  sed -e "s/max_length: 256/max_length: $1/" -e "s/name: imdb-minilm/name: bench-$1/" \
      -e 's/^  validation:/  max_examples: {train: 8000, validation: 100, test: 100}\n  validation:/' pipelines/imdb-minilm.yaml > /tmp/bench-$1.yaml
  echo /tmp/bench-$1.yaml
}
rm -rf .device && mkdir -p .device/bin .device/minilm .device/bert-base .device/stage
cargo build --release -p train --bin ft-bench --bin ft-logits
for b in ft-bench ft-logits; do cp target/release/$b .device/bin/ && strip .device/bin/$b; done
cp -rL "$(tok pipelines/imdb-minilm.yaml)" .device/stage/tok256
cp -rL "$(tok "$(mk 128)")" .device/stage/tok128
cp -rL "$(tok "$(mk 512)")" .device/stage/tok512
rm -f .device/stage/tok*/manifest.json
(cd .device/stage && tar cf - tok128 tok256 tok512 | xz -6 -T2 > ../toks.tar.xz)
rm -rf .device/stage
M=$MIRROR/models/sentence-transformers/all-MiniLM-L6-v2
cp $M/config.json .device/minilm/
.venv/bin/python - "$M/model.safetensors" .device/minilm/model.safetensors <<'PY'
import sys, torch
from safetensors.torch import load_file, save_file
t = load_file(sys.argv[1])
save_file({k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in t.items()}, sys.argv[2], metadata={"format": "pt"})
PY
xz -6 -T2 .device/minilm/model.safetensors
cp bench/gpu/bert-base-uncased.json .device/bert-base/config.json
for fam in roberta-base distilbert-base-uncased modernbert-base; do
  mkdir -p .device/$fam && cp bench/gpu/$fam.json .device/$fam/config.json
done
du -sh .device
