#!/usr/bin/env bash
# Server keys in a real Secret Service: gnome-keyring on a private D-Bus session, its login
# keyring in a temporary folder (never the user's), then the ignored keyring test.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../../.." && pwd)"
cd "$ROOT"
bash .ci/apt-need gnome-keyring dbus-daemon
cargo build -p smollm3-bot --test keyring_store
KEYRINGS="$(mktemp -d)"
trap 'rm -rf "$KEYRINGS"' EXIT
XDG_DATA_HOME="$KEYRINGS" dbus-run-session -- bash -c '
  # A password on stdin creates and unlocks the "login" keyring (the default collection)
  # without a prompt; an empty one creates none.
  printf "ci-password" | gnome-keyring-daemon --unlock --components=secrets >/dev/null
  cargo test -p smollm3-bot --test keyring_store -- --ignored
'
