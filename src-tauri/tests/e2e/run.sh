#!/usr/bin/env bash
# End-to-end test of the desktop app: the real binary in a real WebKitGTK webview under Xvfb,
# driven over WebDriver (tauri-driver + WebKitWebDriver + selenium).
# Installs what it needs when missing, so it runs on a fresh Debian machine.
# Screenshots land in target/e2e-screenshots/.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
cd "$ROOT"

bash "$ROOT/.ci/apt-need" libwebkit2gtk-4.1-dev xvfb xauth webkit2gtk-driver imagemagick python3-venv \
  xdotool python3-gi gir1.2-gtk-3.0 \
  chromium chromium-driver

if ! command -v tauri-driver >/dev/null 2>&1; then
  cargo install --locked tauri-driver --version '^2'
fi

VENV="$ROOT/target/e2e-venv"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c 'import selenium, openai' 2>/dev/null; then
  "$VENV/bin/pip" install -q 'selenium>=4.20,<5' 'openai>=1.30,<3'
fi

# `--setup-only`: the packages, tauri-driver and the venv, for the window benchmark.
if [ "${1:-}" = "--setup-only" ]; then
  exit 0
fi

cargo build -p smollm3-bot --bin smollm3-bot --example mock_hub

export APP_BIN="$ROOT/target/debug/smollm3-bot"
export MOCK_HUB_BIN="$ROOT/target/debug/examples/mock_hub"
export SCREENSHOTS="$ROOT/target/e2e-screenshots"
# The Python that has llama-cpp-python's server (installed by .ci/test), outside the venv.
export LLAMA_PYTHON="${LLAMA_PYTHON:-$(command -v python3)}"
mkdir -p "$SCREENSHOTS"
LOG="$ROOT/target/e2e.log"
run() {
  xvfb-run -a --server-args="-screen 0 1400x1000x24" \
    "$VENV/bin/python" "$ROOT/src-tauri/tests/e2e/test_desktop.py" 2>&1 | tee "$LOG"
  return "${PIPESTATUS[0]}"
}
# WebKitGTK's web process has been seen to crash under a loaded CI machine ("session deleted
# because of page crash or hang"), which ends every check of that session. Such a run is run
# once more, said plainly; any other failure fails at once.
if ! run; then
  if grep -q "page crash or hang" "$LOG"; then
    echo "e2e: the web process crashed; running the end-to-end checks once more"
    run
  else
    exit 1
  fi
fi
