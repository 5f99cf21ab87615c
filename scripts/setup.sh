#!/usr/bin/env bash
# Installs what faascale needs to build on a fresh Debian/Ubuntu machine: a C compiler and
# cargo. Idempotent; does nothing when they are already there.
set -euo pipefail
need=()
command -v cc >/dev/null 2>&1 || need+=(gcc)
command -v cargo >/dev/null 2>&1 || need+=(cargo)
command -v python3 >/dev/null 2>&1 || need+=(python3)
if ((${#need[@]})); then
  echo "setup: installing ${need[*]} with apt-get" >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "${need[@]}"
fi
cargo --version >&2
