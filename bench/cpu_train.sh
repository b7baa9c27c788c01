#!/usr/bin/env bash
# CPU training side by side (issue 5, acceptance 2): all-MiniLM-L6-v2 on the first 2,000 reviews
# of a seeded shuffle of IMDB train, max_length 128, 1 epoch, batch 16, lr 5e-5; test accuracy on
# 1,000 test reviews. Ours (ft-bench, dynamic padding, bucketed) vs HF Trainer (dynamic padding,
# 2 threads), on the same token ids. Needs the offline mirror (../shared) for the data.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -f /tmp/ft-hub.port
python3 ../shared/hub/serve.py ../shared/hub-mirror --port-file /tmp/ft-hub.port 2>/tmp/ft-hub.log & HUB=$!
trap 'kill $HUB' EXIT
while [ ! -s /tmp/ft-hub.port ]; do sleep 0.1; done
export HF_ENDPOINT=http://127.0.0.1:$(cat /tmp/ft-hub.port) HF_HOME=${HF_HOME:-/tmp/ft-hf-home}
sed -e "s/max_length: 256/max_length: 128/" -e "s/name: imdb-minilm/name: cpu-bench/" \
    -e 's/^  validation:/  max_examples: {train: 2000, validation: 200, test: 1000}\n  validation:/' pipelines/imdb-minilm.yaml > /tmp/cpu-bench.yaml
cargo xtask run /tmp/cpu-bench.yaml --only download >&2
TOK=$(cargo xtask run /tmp/cpu-bench.yaml --only tokenize --json 2>/dev/null | tail -1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["artifact"])')
DL=$(cargo xtask run /tmp/cpu-bench.yaml --only download --json 2>/dev/null | tail -1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["artifact"])')
cargo build --release -p train --bin ft-bench >&2
printf 'device: cpu\nprecision: fp32\nepochs: 1\nlearning_rate: 5.0e-5\nbatch_size: 16\nlog_every_steps: 25\n' > /tmp/cpu-bench-train.yaml
OURS=$(target/release/ft-bench --model "$DL/model" --tokens "$TOK" --params /tmp/cpu-bench-train.yaml --out /tmp/cpu-bench-out --eval-split test)
HF=$(.venv/bin/python bench/hf_train.py imdb --model "$DL/model" --tokens "$TOK" --batch 16 --lr 5e-5 --epochs 1 --length 128 --dynamic --threads 2 2>/dev/null | tail -1)
python3 - "$OURS" "$HF" <<'PY'
import json, sys
o, h = json.loads(sys.argv[1]), json.loads(sys.argv[2])
ot = o["train"]
print("| figure | ours | HF Trainer | ratio |\n|---|---|---|---|")
print(f"| training samples/s | {ot['samples_per_second']:.1f} | {h['samples_per_s']:.1f} | {ot['samples_per_second'] / h['samples_per_s']:.2f}x |")
print(f"| training seconds (ours: loop; HF: train_runtime) | {ot['train_seconds'] - ot['eval_and_checkpoint_seconds']:.1f} | {h['train_runtime']:.1f} | |")
print(f"| test accuracy (1,000 reviews) | {100 * o['eval']['accuracy']:.2f}% | {100 * h['test_accuracy']:.2f}% | |")
print(f"| evaluate examples/s | {o['eval']['examples_per_s']:.0f} | {h['eval_examples_per_s']:.0f} | {o['eval']['examples_per_s'] / h['eval_examples_per_s']:.2f}x |")
PY
