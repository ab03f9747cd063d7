#!/usr/bin/env bash
# What the build and `cargo xtask ci` need beyond the Rust toolchain and a C
# compiler: libclang for RocksDB's bindgen (a system package; needs root or
# sudo on Debian), and cargo-deny for the licence, ban and source checks
# (built once from crates.io into CI's cache directory, so warm runs reuse it).
# Idempotent.
set -euo pipefail
missing=()
dpkg -s libclang-dev >/dev/null 2>&1 || missing+=(libclang-dev)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi

# Where `cargo xtask ci` looks for cargo-deny (see xtask's `tool_path`).
tools="${OLOCUS_TOOLS_DIR:-$HOME/.cache/olocus-storage/tools}"
if ! command -v cargo-deny >/dev/null 2>&1 && [ ! -x "$tools/bin/cargo-deny" ]; then
  echo "installing cargo-deny into $tools (once; a few minutes)"
  # Its own target directory: the workspace's build is not disturbed.
  CARGO_TARGET_DIR="$tools/target" cargo install cargo-deny --version "^0.20" --locked --root "$tools"
  rm -rf "$tools/target"
fi
