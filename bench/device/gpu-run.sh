#!/bin/sh
# One call on a lent GPU machine (no Node, no network), from the repository root, with the bundle carried:
#   npm run bundle    # here, first: dist/tokenmill-<version>-linux-x64.tar.xz (about 41 MiB)
#   run(command: "sh bench/device/gpu-run.sh", carry: ["dist/tokenmill-0.1.0-linux-x64.tar.xz"], timeout_s: 590)
# It unpacks the bundle (with Python's tarfile, in case xz is missing), runs its device check (which generates
# qwen3-0.6b-random), then HF transformers' static-batch baseline on that same checkpoint. Both reports, JSON and
# text, go to $OUT (or /tmp/tokenmill-device).
set -eu
out=${OUT:-/tmp/tokenmill-device}
mkdir -p "$out"
archive=$(ls dist/tokenmill-*-linux-x64.tar.xz | head -n 1)
work=$(mktemp -d)
python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$archive" "$work"
root=$(ls -d "$work"/tokenmill-*-linux-x64)
export TOKENMILL_CACHE_DIR="$work/cache" TOKENMILL_DATA_DIR="$work/data"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
# The device check keeps within its limit by itself; the baseline needs about a minute after it.
"$root/bin/tokenmill" device-check --report "$out/device-check.json" --time-limit 420 > "$out/device-check.txt" 2>&1 || echo "device-check exited $?" >> "$out/device-check.txt"
python3 bench/device/hf_baseline.py --model "$TOKENMILL_CACHE_DIR/models/qwen3-0.6b-random" --out "$out/hf-baseline.json" > "$out/hf-baseline.txt" 2>&1 \
  || echo "hf_baseline exited $?" >> "$out/hf-baseline.txt"
cat "$out/device-check.txt" "$out/hf-baseline.txt"
