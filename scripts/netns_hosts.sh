# Sourced: "hosts" made of Linux network namespaces on one machine, for the multi-host test
# (tests/e2e/multihost_test.sh) and benchmark (bench/bench_multihost.sh). Each host is a
# namespace with one veth link to a bridge and one address on a private /24; an rsh agent
# script starts a command inside a host's namespace, so that mpirun reaches the hosts over TCP
# as it would reach real machines.
#
#   netns_hosts_up TAG NET COUNT ERRFILE   # hosts TAG-1..TAG-COUNT at NET.1..NET.COUNT, bridge
#                                          # TAG"br" at NET.254; returns 1 (reason in ERRFILE)
#                                          # when a step is not permitted here
#   netns_hosts_agent TAG FILE             # writes the rsh agent: FILE HOST COMMAND...; each
#                                          # host gets its own temporary directory beside FILE
#   netns_hosts_down TAG COUNT             # removes all of the above (safe to call twice)
#   netns_hosts_rx_bytes TAG H             # bytes host H has sent over its link
#
# TAG must be short (interface names are at most 15 characters). `ip netns add` mounts
# /run/netns on first use; netns_hosts_down unmounts it again when netns_hosts_up mounted it
# and nothing else uses it.

netns_hosts_mounted_before=1

netns_hosts_up() {
  local tag=$1 net=$2 count=$3 err=$4 h
  netns_hosts_mounted_before=0
  mountpoint -q /run/netns 2> /dev/null && netns_hosts_mounted_before=1
  ip link add "${tag}br" type bridge 2> "$err" && ip addr add "$net.254/24" dev "${tag}br" 2>> "$err" &&
    ip link set "${tag}br" up 2>> "$err" || return 1
  for h in $(seq "$count"); do
    ip netns add "$tag-$h" 2> "$err" &&
      ip link add "${tag}v$h" type veth peer name eth0 netns "$tag-$h" 2>> "$err" &&
      ip link set "${tag}v$h" master "${tag}br" up 2>> "$err" &&
      ip netns exec "$tag-$h" ip addr add "$net.$h/24" dev eth0 2>> "$err" &&
      ip netns exec "$tag-$h" ip link set eth0 up 2>> "$err" &&
      ip netns exec "$tag-$h" ip link set lo up 2>> "$err" || { echo "host $h: $(head -1 "$err")" > "$err"; return 1; }
  done
}

# The hosts share one file system and one host name, so OpenMPI's daemons would share their
# session directory (/tmp/ompi.HOSTNAME.UID/JOB/...): one daemon removing it as another creates
# its own made startup fail now and then ("A call to mkdir was unable to create the desired
# directory"). A separate temporary directory per host, as separate machines have, avoids that.
netns_hosts_agent() {
  local tag=$1 file=$2
  local tmp
  tmp=$(cd "$(dirname "$file")" && pwd)
  cat > "$file" <<AGENT
#!/bin/sh
host=\$1
shift
h=\${host##*.}
mkdir -p "$tmp/host-\$h-tmp"
export OMPI_MCA_orte_tmpdir_base="$tmp/host-\$h-tmp"
exec ip netns exec "$tag-\$h" sh -c "\$*"
AGENT
  chmod +x "$file"
}

netns_hosts_down() {
  local tag=$1 count=$2 h
  for h in $(seq "$count"); do ip netns del "$tag-$h" 2> /dev/null; ip link del "${tag}v$h" 2> /dev/null; done
  ip link del "${tag}br" 2> /dev/null
  if [ "$netns_hosts_mounted_before" = 0 ] && mountpoint -q /run/netns 2> /dev/null && [ -z "$(ls -A /run/netns)" ]; then
    umount /run/netns 2> /dev/null
  fi
  return 0
}

netns_hosts_rx_bytes() { cat "/sys/class/net/${1}v$2/statistics/rx_bytes"; }
