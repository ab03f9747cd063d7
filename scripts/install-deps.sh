#!/usr/bin/env bash
# System packages the build needs beyond the Rust toolchain and a C compiler:
# libclang for RocksDB's bindgen. Idempotent; needs root (or sudo) on Debian.
set -euo pipefail
missing=()
dpkg -s libclang-dev >/dev/null 2>&1 || missing+=(libclang-dev)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
