#!/usr/bin/env bash
# Parameter-server pull and push and the workers' allreduce between "hosts" against within one
# host, in one run: bench_ps (1 server + 2 workers) first with one rank on each of 3 hosts made of
# Linux network namespaces (scripts/netns_hosts.sh; TCP only, ranks started through an rsh agent,
# as on a real cluster), then with the 3 ranks in one of those hosts (shared memory), then the
# same 3 ranks in one host over TCP on loopback (the network stack without the links). Prints
# bench_ps's lines of each run and the ratios.
#
#   bash bench/bench_multihost.sh [ITERATIONS]     (as root, after scripts/build.sh; default 300)
#
# Everything it creates (namespaces, links, the bridge) is removed on exit, even when it fails.
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/netns_hosts.sh
iterations=${1:-300}
bench=${BUILD_DIR:-build}/bench/bench_ps
[ -x "$bench" ] || { echo "bench_multihost: $bench not found (bash scripts/build.sh)"; exit 1; }
[ "$(id -u)" -eq 0 ] || { echo "bench_multihost: needs root (network namespaces)"; exit 1; }
bench=$(readlink -f "$bench")
tag="t2bh$$"
net="10.214.$(( ($$ % 200) + 20 ))"
W=$(mktemp -d /tmp/t2d-bench-multihost.XXXXXX)
trap 'netns_hosts_down "$tag" 3; rm -rf "$W"' EXIT
netns_hosts_up "$tag" "$net" 3 "$W/ip.err" || { echo "bench_multihost: cannot make hosts here: $(head -1 "$W/ip.err")"; exit 1; }
netns_hosts_agent "$tag" "$W/agent.sh"
printf '%s slots=1\n' "$net.1" "$net.2" "$net.3" > "$W/hosts"
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs) x $(nproc) cores; $(date -u '+%Y-%m-%d %H:%M UTC')"
mpi=(mpirun --allow-run-as-root --oversubscribe --bind-to none)
run() {  # run NAME MPIRUN-ARGS... : bench_ps with 1 server + 2 workers
  local name=$1
  shift
  echo "== $name"
  timeout 600 "$@" "$bench" --servers=1 --iterations="$iterations" 2>&1 | grep -v '^[IW][0-9]' | tee "$W/$name.out" |
    grep -E "through the server|pull with|push|allreduce|window|Iallreduce"
}
run between-hosts env OMPI_MCA_plm_rsh_agent="$W/agent.sh" OMPI_MCA_oob_tcp_if_include="$net.0/24" \
  OMPI_MCA_btl_tcp_if_include="$net.0/24" OMPI_MCA_btl=tcp,self "${mpi[@]}" -mca plm rsh --hostfile "$W/hosts" \
  --map-by node -np 3
run one-host-shm ip netns exec "$tag-1" env OMPI_MCA_plm=isolated OMPI_MCA_btl=self,vader "${mpi[@]}" -np 3
run one-host-tcp ip netns exec "$tag-1" env OMPI_MCA_plm=isolated OMPI_MCA_btl=self,tcp OMPI_MCA_btl_tcp_if_include=lo \
  OMPI_MCA_oob_tcp_if_include=lo "${mpi[@]}" -np 3
val() { grep -m1 "$2" "$W/$1.out" | sed -E "s/.*$2[^0-9]*([0-9.]+).*/\1/"; }
echo "== ratios (between hosts / within one host)"
for what in "pull   " "push   " "MPI_Iallreduce: "; do
  b=$(val between-hosts "$what"); s=$(val one-host-shm "$what"); t=$(val one-host-tcp "$what")
  [ -n "$b" ] && [ -n "$s" ] && [ -n "$t" ] &&
    echo "$(echo "$what" | tr -d ":" | xargs): between hosts $b, one host shared memory $s ($(awk "BEGIN { printf \"%.2f\", $b / $s }")x), one host TCP loopback $t ($(awk "BEGIN { printf \"%.2f\", $b / $t }")x)"
done
w=$(val one-host-shm "shared-memory window: ")
[ -n "$w" ] && echo "allreduce within one host through the shared-memory window: $w GB/s (between hosts: MPI_Iallreduce over TCP)"
