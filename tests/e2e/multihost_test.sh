#!/usr/bin/env bash
# A job across 3 "hosts": Linux network namespaces on one machine, each with its own address on a
# bridge, reached only over TCP (mpirun starts each host's ranks through an rsh agent that enters
# its namespace). A sync job of 1 server + 2 workers, one rank per host, must end bit for bit as
# the same job on one host, with its traffic on the hosts' links; and so must a supervised job
# across the hosts whose worker is killed (`launch --supervise` restarts it from its checkpoint).
#
# Needs root and permission to create network namespaces; exits 77 (CTest: skipped) with a
# message otherwise. Everything it creates (namespaces, links, the bridge) is removed on exit,
# even when it fails; it sends traffic only to its own addresses and loopback, and bounds every
# wait in time.
#
# usage: multihost_test.sh T2DIFF
set -uo pipefail
T2DIFF=$1
. "$(dirname "$0")/../../scripts/netns_hosts.sh"
tag="t2mh$$"        # prefix of everything made here (interface names <= 15 characters)
subnet_id=$(( ($$ % 200) + 20 ))
net="10.213.$subnet_id"
W=$(mktemp -d /tmp/t2d-multihost.XXXXXX)
cleanup() {
  netns_hosts_down "$tag" 3
  rm -rf "$W"
}
trap cleanup EXIT
. "$(dirname "$0")/lib.sh"

skip() {
  echo "SKIP: cannot build hosts from network namespaces here ($1); needs root and the permission to create"
  echo "namespaces, links and a bridge, and to enter namespaces (ip netns exec)"
  exit 77
}
[ "$(id -u)" -eq 0 ] || skip "not root"
command -v ip > /dev/null || skip "no ip command (Debian package iproute2)"
# Everything below is the environment, not t2diff: a step that is not permitted skips the test.
netns_hosts_up "$tag" "$net" 3 "$W/ip.err" || skip "$(head -1 "$W/ip.err")"
# The rsh agent: `agent HOST COMMAND...` runs COMMAND in HOST's namespace (HOST = its address).
netns_hosts_agent "$tag" "$W/agent.sh"
printf '%s slots=1\n' "$net.1" "$net.2" "$net.3" > "$W/hosts"

cat > "$W/job.textproto" <<CFG
cluster { num_servers: 1 num_workers: 2 timeout_s: 60 }
tables { name: "item_id" dim: 4 optimizer { kind: ADAGRAD learning_rate: 0.05 } }
tables { name: "item_tag" dim: 4 optimizer { kind: ADAGRAD learning_rate: 0.05 } }
data {
  source: SYNTHETIC dataset_dir: "$W/data" max_seq_len: 20 session_len: 5 split: LAST_ITEM num_shards: 4
  generator { num_users: 300 num_items: 150 mean_seq_len: 20 }
}
model { diffusion_steps: 10 }
training { batch_size: 64 epochs: 2 log_every_steps: 10 output_dir: "$W/out" }
checkpoint { dir: "$W/ckpt" every_steps: 5 }
CFG
"$T2DIFF" generate -c "$W/job.textproto" > "$W/gen.log" 2>&1 || { echo "generate failed"; cat "$W/gen.log"; exit 1; }

rx_bytes() { netns_hosts_rx_bytes "$tag" "$1"; }  # sent by host $1
before=($(rx_bytes 1) $(rx_bytes 2) $(rx_bytes 3))
# Across the hosts: one rank per host (mapped by node), TCP on the hosts' subnet only.
export OMPI_MCA_plm_rsh_agent="$W/agent.sh" OMPI_MCA_rmaps_base_mapping_policy=node \
  OMPI_MCA_oob_tcp_if_include="$net.0/24" OMPI_MCA_btl_tcp_if_include="$net.0/24" OMPI_MCA_btl=tcp,self
unset OMPI_MCA_plm
timeout 300 "$T2DIFF" launch -c "$W/job.textproto" --set "cluster.hostfile=$W/hosts" > "$W/multi.log" 2>&1
rc=$?
check "a job of 1 server + 2 workers on 3 hosts completes (rc $rc)" test $rc -eq 0 || tail -40 "$W/multi.log"
sent=()
for h in 1 2 3; do sent+=($(( ($(rx_bytes $h) - ${before[$((h - 1))]}) / 1024 ))); done
check "every host's rank talked over its link (KiB sent: ${sent[*]})" test "${sent[0]}" -gt 100 -a "${sent[1]}" -gt 100 -a "${sent[2]}" -gt 100

# Supervised across the hosts: worker 1 (on host 3) is killed after the first checkpoint; the job
# is restarted from it and completes.
timeout 300 "$T2DIFF" launch -c "$W/job.textproto" --supervise --set "cluster.hostfile=$W/hosts" \
  --set "checkpoint.dir=$W/ckpt_sup" --set "training.output_dir=$W/out_sup" --set cluster.supervise.heartbeat_s=5 \
  > "$W/sup.log" 2>&1 &
sup=$!
victim=
for _ in $(seq 300); do
  if ls -d "$W"/ckpt_sup/ckpt-* > /dev/null 2>&1; then
    victim=$(for p in $(ip netns pids "$tag-3"); do grep -qa "train" "/proc/$p/cmdline" 2> /dev/null &&
      [ "$(tr '\0' ' ' < "/proc/$p/cmdline" | cut -d' ' -f2)" = train ] && echo "$p"; done | head -1)
    [ -n "$victim" ] && break
  fi
  sleep 0.1
done
[ -n "$victim" ] && kill -9 "$victim"
wait $sup
rc=$?
check "a supervised job on 3 hosts survives killing the worker on host 3 (pid ${victim:-none}; rc $rc)" test -n "$victim" -a $rc -eq 0
check "it was restarted from its checkpoint" grep -q "supervise: restart 1 of" "$W/sup.log" || tail -40 "$W/sup.log"
unset OMPI_MCA_plm_rsh_agent OMPI_MCA_rmaps_base_mapping_policy OMPI_MCA_oob_tcp_if_include OMPI_MCA_btl_tcp_if_include OMPI_MCA_btl
export OMPI_MCA_plm=isolated

# The same job on one host: the same final checkpoint, bit for bit (sync mode).
timeout 300 "$T2DIFF" launch -c "$W/job.textproto" --set "checkpoint.dir=$W/ckpt1" --set "training.output_dir=$W/out1" > "$W/single.log" 2>&1
check "the same job on one host completes" test $? -eq 0 || tail -40 "$W/single.log"
multi=$(ls -d "$W"/ckpt/ckpt-* 2> /dev/null | tail -1)
single=$(ls -d "$W"/ckpt1/ckpt-* 2> /dev/null | tail -1)
same() {
  [ -n "$1" ] && [ "$(basename "$1")" = "$(basename "$2")" ] && cmp -s "$1/dense.t2dd" "$2/dense.t2dd" &&
    for f in "$1"/sparse/*; do cmp -s "$f" "$2/sparse/$(basename "$f")" || return 1; done
}
check "both end with the same checkpoint, bit for bit" same "$multi" "$single"
check "and the same test metrics" test -n "$(grep '^test ' "$W/multi.log")" -a \
  "$(grep '^test ' "$W/multi.log")" = "$(grep '^test ' "$W/single.log")"
check "the supervised, restarted job too" same "$(ls -d "$W"/ckpt_sup/ckpt-* 2> /dev/null | tail -1)" "$single"

echo "multihost e2e: $passes passed, $failures failed"
[ "$failures" -eq 0 ]
