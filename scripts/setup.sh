#!/usr/bin/env bash
# Installs what faascale needs to build and test on a fresh Debian/Ubuntu machine: a C compiler,
# cargo, python3; rdma-core's headers (the verbs layout test compiles against them; nothing links
# libibverbs at build time); iproute2 and ping for the network-namespace test bed. Idempotent:
# does nothing when they are already there.
set -euo pipefail
need=()
command -v cc >/dev/null 2>&1 || need+=(gcc)
command -v cargo >/dev/null 2>&1 || need+=(cargo)
command -v python3 >/dev/null 2>&1 || need+=(python3)
[ -f /usr/include/infiniband/verbs.h ] || need+=(libibverbs-dev)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v ping >/dev/null 2>&1 || need+=(iputils-ping)
if ((${#need[@]})); then
  echo "setup: installing ${need[*]} with apt-get" >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "${need[@]}"
fi
cargo --version >&2
