#!/usr/bin/env bash
# The Linux packages, built and smoke-tested: the .deb and the .rpm are made by Tauri's bundler
# (`tauri bundle`, from npm's prebuilt CLI) around the debug binary the other suites built, then
# the .deb is installed with dpkg and the .rpm unpacked (this is a Debian machine), their
# contents are checked (binary, desktop entry, icons, dependencies), and each one's binary is
# started under Xvfb with an empty data folder and driven over WebDriver until the first-run
# wizard shows. The .deb is removed again at the end. Screenshots: target/bundle-screenshots/.
#
# A release package is made the same way from a release build (doc/desktop.md); the debug
# binary keeps this check to one build in CI. The AppImage is not made here: Tauri's bundler
# downloads linuxdeploy from GitHub for it, which this machine cannot reach.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
cd "$ROOT"
bash "$ROOT/.ci/apt-need" rpm2cpio cpio xvfb xauth webkit2gtk-driver python3-venv
# npm for Tauri's CLI: a Node.js that brings its own npm (NodeSource's) is kept as it is.
command -v npm >/dev/null 2>&1 || bash "$ROOT/.ci/apt-need" nodejs npm
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# The e2e suite's tauri-driver and selenium venv (installed by its setup when missing).
bash src-tauri/tests/e2e/run.sh --setup-only

CLI_DIR="$ROOT/target/tauri-cli"
TAURI="$CLI_DIR/node_modules/.bin/tauri"
if [ ! -x "$TAURI" ]; then
  mkdir -p "$CLI_DIR"
  npm install --prefix "$CLI_DIR" --no-audit --no-fund --silent '@tauri-apps/cli@2'
fi
# `--setup-only`: the packages and the tools, fetched ahead (.ci/prefetch).
if [ "${1:-}" = "--setup-only" ]; then
  exit 0
fi

cargo build -p smollm3-bot --bin smollm3-bot
BUNDLE="$ROOT/target/debug/bundle"
rm -rf "$BUNDLE/deb" "$BUNDLE/rpm"
(cd src-tauri && "$TAURI" bundle --debug --bundles deb,rpm --ci)
DEB=$(ls "$BUNDLE"/deb/*.deb)
RPM=$(ls "$BUNDLE"/rpm/*.rpm)
echo "bundle: built $(basename "$DEB") ($(du -h "$DEB" | cut -f1)), $(basename "$RPM") ($(du -h "$RPM" | cut -f1))"

WORK=$(mktemp -d)
PKG=$(dpkg-deb -f "$DEB" Package)
cleanup() {
  if dpkg -s "$PKG" >/dev/null 2>&1; then as_root dpkg -r "$PKG" >/dev/null; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# The .deb: its control fields, then a real install.
dpkg-deb -f "$DEB" Depends | grep -q 'libwebkit2gtk-4.1-0' ||
  { echo "bundle: the .deb does not depend on libwebkit2gtk-4.1-0"; exit 1; }
as_root dpkg -i "$DEB" >/dev/null
mapfile -t DEB_FILES < <(dpkg -L "$PKG")
# The .rpm: unpacked into a folder of its own. Debian's rpm2cpio exits 1 on the bundler's
# packages although it writes the whole archive, so cpio (which needs the archive's trailer)
# and the checks below judge it.
mkdir -p "$WORK/rpm"
rpm2cpio "$RPM" >"$WORK/rpm.cpio" || true
(cd "$WORK/rpm" && cpio -idm --quiet <"$WORK/rpm.cpio")

VENV="$ROOT/target/e2e-venv"
export SCREENSHOTS="$ROOT/target/bundle-screenshots"
mkdir -p "$SCREENSHOTS"
xvfb-run -a --server-args="-screen 0 1400x1000x24" "$VENV/bin/python" src-tauri/tests/bundle/smoke.py \
  --installed / --unpacked "$WORK/rpm" -- "${DEB_FILES[@]}"
