#!/usr/bin/env bash
# A test cluster of N nodes in network namespaces, joined by shaped links (the shell side of rdma::testbed; both
# build the same layout, so either can inspect or remove the other's).
#
#   netns.sh up N RATE_MBIT [PREFIX]   build it; prints `export FAASCALE_NETNS_PREFIX=...` for eval
#   netns.sh exec I CMD...             run CMD in node I of $FAASCALE_NETNS_PREFIX
#   netns.sh down [PREFIX]             kill what runs inside and delete it (default $FAASCALE_NETNS_PREFIX)
#   netns.sh run N RATE_MBIT CMD...    up, start CMD once per node, wait for all, down (also on failure,
#                                      Ctrl-C, TERM or HUP); exits with the first failing worker's status
#   netns.sh run N loopback CMD...     the same without namespaces: every node is 127.0.0.1
#   netns.sh stale                     delete namespaces left by dead owners (names fs<pid>-*, fs<pid>t<seq>-*)
#
# Layout for prefix P: namespace P-sw holds bridge br0 and the veth ends v0..v(N-1); namespace P-n<i> holds the
# other end, eth0, with address 10.77.0.<i+1>/24, MTU 1500. Both ends carry
# `tc qdisc add dev DEV root tbf rate RATE_MBITmbit burst 256kb latency 50ms`, so each node has a full-duplex
# link of that rate. Nothing is created in the root namespace.
#
# Workers started by `run` get FS_NODE_INDEX, FS_NODE_COUNT, FS_NODE_ADDR (their address), FS_NODE_ADDRS (all
# addresses, comma-separated, index order) and FS_NODE_LOOPBACK (1 or 0). In loopback mode all addresses are
# 127.0.0.1 and a worker adds FS_NODE_INDEX to its base port.
#
# Needs root, iproute2 (`ip`, `tc`) and the sch_tbf qdisc. Names: `up` defaults to the prefix fsu<pid> (never
# taken for stale, since its shell is gone once `up` returns); `run` uses fs<pid>, which `stale` and
# rdma::testbed remove once that pid is dead (e.g. after `kill -9`).
# Signals: `run` cleans up on INT (Ctrl-C), TERM and HUP. A script started with `&` from a non-interactive shell
# has SIGINT ignored by POSIX rule, so send it TERM there.
set -euo pipefail

MAX_NODES=64
MAX_RATE_MBIT=100000

die() {
  echo "netns.sh: $*" >&2
  exit 2
}

usage() {
  sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

check_count() { # N
  [[ $1 =~ ^[0-9]+$ ]] && (($1 >= 1 && $1 <= MAX_NODES)) || die "node count '$1' is not an integer in 1..$MAX_NODES"
}

check_rate() { # RATE_MBIT
  [[ $1 =~ ^[0-9]+$ ]] && (($1 >= 1 && $1 <= MAX_RATE_MBIT)) ||
    die "link rate '$1' is not an integer number of Mbit/s in 1..$MAX_RATE_MBIT"
}

check_prefix() { # PREFIX
  [[ $1 =~ ^[A-Za-z0-9_]{1,32}$ ]] || die "prefix '$1' must be 1..32 characters of [A-Za-z0-9_]"
}

require_tools() {
  [ "$(id -u)" = 0 ] || die "needs root (network namespaces, veths and tc)"
  command -v ip >/dev/null || die "no 'ip' (install iproute2)"
  command -v tc >/dev/null || die "no 'tc' (install iproute2)"
}

# Runs one ip/tc call; on failure names it and stops (the caller's trap removes what was built).
step() {
  local err
  if ! err=$("$@" 2>&1); then
    echo "netns.sh: '$*' failed: $err" >&2
    return 1
  fi
}

namespaces_of() { # PREFIX -> names of its namespaces
  ip netns list | awk '{print $1}' | while read -r ns; do
    case $ns in "$1"-*) echo "$ns" ;; esac
  done
}

remove_prefix() { # PREFIX: kill what runs inside its namespaces, then delete them
  local ns pids failed=0
  for ns in $(namespaces_of "$1"); do
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    if [ -n "$pids" ]; then
      # shellcheck disable=SC2086 # one pid per word
      kill -KILL $pids 2>/dev/null || true
    fi
    ip netns del "$ns" || {
      echo "netns.sh: could not delete namespace $ns" >&2
      failed=1
    }
  done
  return $failed
}

check_free() { # PREFIX: call before arming a clean-up trap, which would otherwise delete what is there
  [ -z "$(namespaces_of "$1")" ] || die "namespaces with prefix $1- exist already; run: $0 down $1"
}

build() { # N RATE_MBIT PREFIX
  local n=$1 rate=$2 p=$3 i ns sw="$3-sw"
  local tbf=(root tbf rate "${rate}mbit" burst 256kb latency 50ms)
  step ip netns add "$sw"
  step ip -n "$sw" link add br0 type bridge
  step ip -n "$sw" link set br0 up
  for ((i = 0; i < n; i++)); do
    ns="$p-n$i"
    step ip netns add "$ns"
    step ip -n "$sw" link add "v$i" mtu 1500 type veth peer name eth0 netns "$ns" mtu 1500
    step ip -n "$sw" link set "v$i" master br0 up
    step tc -n "$sw" qdisc add dev "v$i" "${tbf[@]}"
    step ip -n "$ns" addr add "10.77.0.$((i + 1))/24" dev eth0
    step ip -n "$ns" link set eth0 up
    step ip -n "$ns" link set lo up
    step tc -n "$ns" qdisc add dev eth0 "${tbf[@]}"
  done
}

addrs() { # N loopback? -> comma-separated addresses
  local n=$1 loop=$2 i out=""
  for ((i = 0; i < n; i++)); do
    if [ "$loop" = 1 ]; then out+="127.0.0.1,"; else out+="10.77.0.$((i + 1)),"; fi
  done
  echo "${out%,}"
}

cmd_up() { # N RATE_MBIT [PREFIX]
  (($# >= 2 && $# <= 3)) || usage
  check_count "$1"
  check_rate "$2"
  local p=${3:-fsu$$}
  check_prefix "$p"
  require_tools
  check_free "$p"
  UP_PREFIX=$p
  UP_DONE=0
  trap '[ "$UP_DONE" = 1 ] || remove_prefix "$UP_PREFIX"' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  build "$1" "$2" "$p"
  UP_DONE=1
  echo "netns.sh: $1 nodes at $2 Mbit/s: namespaces $p-n0..$p-n$(($1 - 1)) ($(addrs "$1" 0)), switch $p-sw" >&2
  echo "export FAASCALE_NETNS_PREFIX=$p"
}

cmd_down() { # [PREFIX]
  (($# <= 1)) || usage
  local p=${1:-${FAASCALE_NETNS_PREFIX:-}}
  [ -n "$p" ] || die "down: no PREFIX given and FAASCALE_NETNS_PREFIX is not set"
  check_prefix "$p"
  require_tools
  remove_prefix "$p"
}

cmd_exec() { # I CMD...
  (($# >= 2)) || usage
  local p=${FAASCALE_NETNS_PREFIX:-}
  [ -n "$p" ] || die "exec: FAASCALE_NETNS_PREFIX is not set (eval the output of '$0 up ...')"
  check_prefix "$p"
  [[ $1 =~ ^[0-9]+$ ]] || die "exec: node index '$1' is not a number"
  ip netns list | awk '{print $1}' | grep -qx -- "$p-n$1" || die "exec: no namespace $p-n$1"
  local ns="$p-n$1"
  shift
  exec ip netns exec "$ns" "$@"
}

RUN_PREFIX=""
RUN_PIDS=()
run_cleanup() {
  local pid
  disown -a 2>/dev/null || true # no "Killed" report per worker; their status no longer matters
  # Each worker leads its own process group (set -m below): kill the group, so its children go too.
  for pid in "${RUN_PIDS[@]}"; do kill -KILL -- "-$pid" "$pid" 2>/dev/null || true; done
  if [ -n "$RUN_PREFIX" ]; then remove_prefix "$RUN_PREFIX" || true; fi
}

cmd_run() { # N RATE_MBIT|loopback CMD...
  (($# >= 3)) || usage
  check_count "$1"
  local n=$1 rate=$2 loop=0 i status=0 s all
  shift 2
  if [ "$rate" = loopback ]; then
    loop=1
  else
    check_rate "$rate"
    require_tools
    check_free "fs$$"
  fi
  trap run_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  trap 'exit 129' HUP
  if [ $loop = 0 ]; then
    RUN_PREFIX=fs$$
    build "$n" "$rate" "$RUN_PREFIX"
  fi
  all=$(addrs "$n" $loop)
  set -m # a process group per worker, for run_cleanup
  for ((i = 0; i < n; i++)); do
    local addr=127.0.0.1
    [ $loop = 1 ] || addr=10.77.0.$((i + 1))
    local envs=(env FS_NODE_INDEX="$i" FS_NODE_COUNT="$n" FS_NODE_ADDR="$addr" FS_NODE_ADDRS="$all"
      FS_NODE_LOOPBACK="$loop")
    if [ $loop = 1 ]; then
      "${envs[@]}" "$@" </dev/null &
    else
      ip netns exec "$RUN_PREFIX-n$i" "${envs[@]}" "$@" </dev/null &
    fi
    RUN_PIDS+=($!)
  done
  for i in "${!RUN_PIDS[@]}"; do
    s=0
    wait "${RUN_PIDS[$i]}" || s=$?
    if [ $s != 0 ]; then
      echo "netns.sh: worker $i exited with status $s" >&2
      [ $status != 0 ] || status=$s
    fi
  done
  exit $status
}

cmd_stale() {
  (($# == 0)) || usage
  require_tools
  local ns pid prefix failed=0
  local -A seen=()
  for ns in $(ip netns list | awk '{print $1}'); do
    [[ $ns =~ ^(fs([0-9]{1,10})(t[0-9]+)?)-.+$ ]] || continue
    prefix=${BASH_REMATCH[1]}
    pid=${BASH_REMATCH[2]}
    [ -e "/proc/$pid" ] && continue
    [ -z "${seen[$prefix]:-}" ] || continue
    seen[$prefix]=1
    if remove_prefix "$prefix"; then
      echo "netns.sh: removed stale $prefix-* (owner pid $pid is gone)" >&2
    else
      failed=1
    fi
  done
  return $failed
}

(($# >= 1)) || usage
sub=$1
shift
case $sub in
  up) cmd_up "$@" ;;
  down) cmd_down "$@" ;;
  exec) cmd_exec "$@" ;;
  run) cmd_run "$@" ;;
  stale) cmd_stale "$@" ;;
  *) usage ;;
esac
