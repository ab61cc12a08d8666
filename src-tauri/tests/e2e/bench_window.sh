#!/usr/bin/env bash
# The window's streaming benchmark (see bench_window.py): the release app under Xvfb, driven
# over WebDriver, with the full-size synthetic model (made once, 1.9 GB, in target/bench-models).
# Prints engine decode, in-app decode and their ratio, the long reply's tail against its head,
# and WebKit's CPU share. Run it three times for min/median/max.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
cd "$ROOT"
bash src-tauri/tests/e2e/run.sh --setup-only
cargo build --release -p smollm3-bot --bin smollm3-bot
export APP_BIN="$ROOT/target/release/smollm3-bot"
MODELS="$ROOT/target/bench-models"
mkdir -p "$MODELS"
export MODEL_PATH="$MODELS/SmolLM3-3B-synth-Q4_K_M.gguf"
if [ ! -f "$MODEL_PATH" ]; then
  "$APP_BIN" synth --preset 3b --quant q4_k_m --seed 1 --out "$MODEL_PATH"
fi
xvfb-run -a --server-args="-screen 0 1400x1000x24" \
  "$ROOT/target/e2e-venv/bin/python" "$ROOT/src-tauri/tests/e2e/bench_window.py"
