#!/usr/bin/env bash
# Build every plugin in this workspace to optimised, stripped .wasm files in
# plugins/dist/. Uses rustup's wasm32-unknown-unknown target when installed;
# otherwise Debian's Rust (rustc, cargo, libstd-rust-dev-wasm32, lld-14), installing
# it with apt-get when running as root.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
target=wasm32-unknown-unknown

if command -v rustup >/dev/null 2>&1 && rustup target list --installed 2>/dev/null | grep -qx "$target"; then
  build=(cargo build)
else
  # rust-lld (the wasm linker) points into lld-14, only a Recommends of
  # libstd-rust-dev-wasm32, so name it.
  if [ ! -x /usr/bin/rustc ] || [ ! -x /usr/bin/cargo ] || [ ! -d /usr/lib/rustlib/$target ] \
     || ! command -v lld-14 >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
      echo "plugins: installing Debian's Rust for $target" >&2
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq
      apt-get install -y -qq --no-install-recommends rustc cargo libstd-rust-dev-wasm32 lld-14 >/dev/null
    else
      echo "plugins: need rustup's $target target, or Debian's rustc, cargo and libstd-rust-dev-wasm32" >&2
      exit 1
    fi
  fi
  # rustup's proxies must not pick the toolchain for Debian's cargo.
  build=(env -u RUSTUP_TOOLCHAIN RUSTC=/usr/bin/rustc /usr/bin/cargo build)
fi

# Debian's cargo writes a version-3 lock file that newer cargo would rewrite;
# the workspace has no dependencies, so the lock file is not kept.
rm -f Cargo.lock
"${build[@]}" --quiet --release --target "$target" --target-dir "$here/target"
mkdir -p dist
for wasm in target/$target/release/pixmesh_plugin_*.wasm; do
  name="$(basename "$wasm" .wasm)"
  cp "$wasm" "dist/${name#pixmesh_plugin_}.wasm"
done
rm -f Cargo.lock
ls dist/*.wasm
