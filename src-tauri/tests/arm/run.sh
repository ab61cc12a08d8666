#!/usr/bin/env bash
# The engine's ARM tests: cross-compiles the model crate (`smollm3-model`: the GGUF, the
# decoder, its kernels; nothing of the app) for aarch64-unknown-linux-gnu and runs its unit
# tests, the reference logits and the kernel-versus-candle test under qemu-user (and
# type-checks the app without the desktop for aarch64). `-cpu max` has dotprod and i8mm, so
# every NEON variant runs there (the tests loop over them, each named in the output); then
# the kernel, attention, norm and SwiGLU tests run again as a Cortex-A72 (no dotprod), where
# only the baseline variant is detected.
# Installs what it needs on a fresh Debian/Ubuntu machine. Cargo is configured through the
# environment here, not a committed .cargo/config, so other builds are unaffected.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
cd "$ROOT"
TARGET=aarch64-unknown-linux-gnu
started=$(date +%s)

bash "$ROOT/.ci/apt-need" gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user
if ! rustup target list --installed | grep -qx "$TARGET"; then
  rustup target add "$TARGET"
fi
QEMU=$(command -v qemu-aarch64 || command -v qemu-aarch64-static)
SYSROOT=/usr/aarch64-linux-gnu

export CARGO_TERM_COLOR=never CARGO_INCREMENTAL=0
export CARGO_PROFILE_DEV_DEBUG=0 CARGO_PROFILE_TEST_DEBUG=0
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
# A target directory of its own: the host builds' artifacts and locks are left alone.
export CARGO_TARGET_DIR="${SMOLLM3_ARM_TARGET_DIR:-$ROOT/target/arm}"
if [ -z "${SMOLLM3_FIXTURES:-}" ] && [ -d "$ROOT/../shared/fixtures" ]; then
  export SMOLLM3_FIXTURES="$(cd "$ROOT/../shared/fixtures" && pwd)"
fi
export SMOLLM3_PREPARED_DIR="${SMOLLM3_PREPARED_DIR:-$(mktemp -d)}"

# The tests are the model crate's: its dependencies are candle and a few small crates, so a
# cold cross build compiles a fraction of what the app needs.
cargo_arm() {
  cargo test -p smollm3-model --target "$TARGET" "$@"
}
with_cpu() {
  local cpu=$1
  shift
  CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="$QEMU -cpu $cpu -L $SYSROOT" "$@"
}

cargo_arm --no-run --lib --test reference --test kernels_model
# The whole app without the desktop (engine, CLI, server: a headless ARM box's build)
# type-checked for aarch64, so nothing outside the model can break the ARM build unseen.
cargo check -p smollm3-bot --no-default-features --target "$TARGET" --lib --bins
built=$(date +%s)
echo "arm: cross build took $((built - started)) s"

# `--nocapture` keeps the lines that name each kernel variant as it is checked.
echo "arm: qemu -cpu max (NEON with dotprod and i8mm): model unit tests"
with_cpu max cargo_arm --lib -- --nocapture
echo "arm: qemu -cpu max: llama.cpp reference logits and every weight against candle"
with_cpu max cargo_arm --test reference --test kernels_model -- --nocapture
# candle 0.11's own k-quant products use `sdot` unconditionally on aarch64, so on this CPU
# only the tests that never call them can run: not the ones comparing with candle's products,
# nor a whole model (the tiny fixtures' output matrix has 1000 rows, which the sixteen-row
# layout cannot take, so it goes through candle).
echo "arm: qemu -cpu cortex-a72 (NEON without dotprod): kernel, attention, norm, SwiGLU tests"
with_cpu cortex-a72 cargo_arm --lib -- --nocapture \
  kernels::neon:: kernels::tests:: \
  kernels::interleaved::tests::many_products kernels::interleaved::tests::fused_swiglu \
  attention:: norm:: swiglu::

echo "arm: tests took $(($(date +%s) - built)) s, $(($(date +%s) - started)) s in all"
