#!/usr/bin/env bash
# The Windows build, type-checked from Linux: the library and the binary (the desktop window
# included) for x86_64-pc-windows-gnu, so a Windows-only compile error (a `cfg(windows)` path,
# a Unix-only API outside `cfg(unix)`) cannot land. Nothing is linked or run: there is no
# Windows here. Installs the rustup target and mingw-w64 (build scripts compile C parts such
# as SQLite for the target) on a fresh Debian/Ubuntu machine.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
cd "$ROOT"
TARGET=x86_64-pc-windows-gnu

bash "$ROOT/.ci/apt-need" gcc-mingw-w64-x86-64
if ! rustup target list --installed | grep -qx "$TARGET"; then
  rustup target add "$TARGET"
fi
export CARGO_TERM_COLOR=never CARGO_INCREMENTAL=0
export CC_x86_64_pc_windows_gnu=x86_64-w64-mingw32-gcc
export AR_x86_64_pc_windows_gnu=x86_64-w64-mingw32-ar
# Warnings count: what is dead or unused only on Windows is found here and nowhere else.
RUSTFLAGS="-D warnings" cargo check -p smollm3-bot --target "$TARGET" --lib --bins
echo "windows: the library and the binary type-check for $TARGET"
