#!/usr/bin/env bash
# Browser test of the built-in server: the real `smollm3-bot serve` binary on 127.0.0.1 with a
# tiny synthetic model, driven by headless Chromium over WebDriver (chromedriver + selenium).
# Installs what it needs when missing, so it runs on a fresh Debian machine.
# Screenshots land in target/browser-screenshots/.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
cd "$ROOT"

bash "$ROOT/.ci/apt-need" chromium chromium-driver python3-venv

# The same Python environment as the desktop end-to-end test.
VENV="$ROOT/target/e2e-venv"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c 'import selenium' 2>/dev/null; then
  "$VENV/bin/pip" install -q 'selenium>=4.20,<5'
fi

cargo build -p smollm3-bot --bin smollm3-bot
APP_BIN="$ROOT/target/debug/smollm3-bot"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/smollm3-bot-browser-XXXXXX")
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 "$SERVER_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

MODEL="$WORK/tiny-q4.gguf"
"$APP_BIN" synth --preset tiny --out "$MODEL" >/dev/null

PORT=$("$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
LOG="$WORK/serve.log"
# A data folder of its own, so the test never touches the user's conversations.
env -u SMOLLM3_API_KEY -u HOST -u PORT -u MODEL_PATH SMOLLM3_BOT_DATA_DIR="$WORK/data" \
  "$APP_BIN" serve --model "$MODEL" --host 127.0.0.1 --port "$PORT" >"$LOG" 2>&1 &
SERVER_PID=$!

BASE=""
for _ in $(seq 1 600); do
  if grep -q '^listening on ' "$LOG"; then
    BASE=$(sed -n 's/^listening on //p' "$LOG" | head -n1)
    break
  fi
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "the server exited before listening:"; cat "$LOG"; exit 1
  fi
  sleep 0.2
done
if [ -z "$BASE" ]; then
  echo "the server did not start within 120 s:"; cat "$LOG"; exit 1
fi
echo "server at $BASE"

export BASE_URL="$BASE"
export SCREENSHOTS="$ROOT/target/browser-screenshots"
mkdir -p "$SCREENSHOTS"
status=0
timeout 600 "$VENV/bin/python" "$ROOT/src-tauri/tests/browser/test_browser.py" || status=$?
if [ "$status" -ne 0 ]; then
  echo "server log:"; tail -n 50 "$LOG"
fi
exit "$status"
