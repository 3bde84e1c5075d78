#!/usr/bin/env bash
# Cilium's Star Wars demo on one machine, no cluster: a node (a network namespace running
# node-agent with its eBPF datapath and l7-proxy) and three pods (namespaces wired to it by
# veth pairs): the deathstar (a real HTTP server on port 80), tiefighter and xwing. It
# applies the L3/L4 policy, then the L7 policy, restarts the agent, and checks every
# outcome the story tells. Then the "AKS and Cilium 101" toFQDNs story (seeds/001): a pod
# allowed DNS to the cluster DNS (dnsmasq in a pod, behind dns-proxy) and toFQDNs google.com
# reaches google.com on "the internet" (a namespace outside the cluster) but not github.com.
# It removes what it created when it ends, fails or is interrupted.
#
# Run as root from anywhere: bash examples/demo.sh    (exit 0: every step behaved)
# The offline policy walkthrough (validate / explain / show) is examples/explain.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

bold() { printf '\033[1m%s\033[0m\n' "$*"; }
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

# --- prerequisites -----------------------------------------------------------------------
[ "$(id -u)" = 0 ] || die "run as root (it creates network namespaces and loads eBPF programs): sudo env PATH=\"\$PATH\" bash examples/demo.sh"
command -v cargo >/dev/null 2>&1 || die "cargo is missing: install Rust (https://rustup.rs)"
# Debian packages of what is missing; installed here when apt-get is available, so that on a
# fresh Debian/Ubuntu machine this one command does all the set-up.
packages=()
need() { command -v "$1" >/dev/null 2>&1 || packages+=("$2"); }
need clang clang
need gcc gcc
need ip iproute2
need tc iproute2
need nsenter util-linux
need curl curl
need python3 python3
need dnsmasq dnsmasq-base
need dig dnsutils
[ -e /usr/include/bpf/bpf_helpers.h ] || packages+=(libbpf-dev)
[ -e /usr/include/linux/bpf.h ] || packages+=(linux-libc-dev)
if [ ${#packages[@]} -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 ||
        die "missing Debian packages: ${packages[*]} (install them, then run again)"
    echo "demo: installing the missing Debian packages: ${packages[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${packages[@]}" >/dev/null ||
        die "apt-get install ${packages[*]} failed: install them, then run again"
fi

step "Build the agent and the proxies"
echo "\$ cargo build -p node-agent -p l7-proxy -p dns-proxy"
cargo build --quiet -p node-agent -p l7-proxy -p dns-proxy
agent=$root/target/debug/node-agent
proxy=$root/target/debug/l7-proxy
dns_proxy=$root/target/debug/dns-proxy

# --- names, and cleanup whatever happens ---------------------------------------------------
id=$$
node=sw-node-$id
work=
bpf_dir=/sys/fs/bpf/sidecarless/demo-$id
pids=()
names=() # what each of pids is, for messages
namespaces=()

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    for pid in "${pids[@]}"; do
        for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    if [ "$rc" = 130 ] || [ "$rc" = 143 ]; then
        echo "demo: interrupted; cleaning up" >&2
    elif [ "$rc" != 0 ] && [ -d "$work" ]; then
        for log in "$work"/*.log; do
            [ -s "$log" ] || continue
            printf '\n--- last lines of %s ---\n' "$(basename "$log")" >&2
            tail -n 15 "$log" >&2
        done
    fi
    for ns in "${namespaces[@]}"; do ip netns del "$ns" 2>/dev/null; rm -rf "/etc/netns/$ns"; done
    rm -rf "$bpf_dir"
    if [ -n "$work" ]; then rm -rf "$work"; fi
    exit "$rc"
}
# What a run killed with SIGKILL left behind: namespaces and pin folders of dead demos.
for ns in $(ip netns list | awk '{print $1}' | grep -E '^sw-[a-z]+-[0-9]+$' || true); do
    [ -d "/proc/${ns##*-}" ] && continue
    echo "removing $ns and its processes, left by an earlier run"
    ip netns pids "$ns" | xargs -r kill -KILL 2>/dev/null || true
    ip netns del "$ns"
    rm -rf "/etc/netns/$ns"
done
for dir in /sys/fs/bpf/sidecarless/demo-*; do
    [ -d "$dir" ] && ! [ -d "/proc/${dir##*-}" ] && { echo "removing $dir, left by an earlier run"; rm -rf "$dir"; }
done
for dir in /tmp/sidecarless-demo-*; do
    pid=${dir#/tmp/sidecarless-demo-}
    [ -d "$dir" ] && ! [ -d "/proc/${pid%%.*}" ] && rm -rf "$dir"
done
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
work=$(mktemp -d "/tmp/sidecarless-demo-$id.XXXX")
manifests=$work/manifests
sock=$work/agent.sock

# --- the node and its pods -------------------------------------------------------------------
step "A node, five pods and the internet, as network namespaces"
ip netns add "$node"
namespaces+=("$node")
ip -n "$node" link set lo up
ip netns exec "$node" sysctl -qw net.ipv4.ip_forward=1
# The pods are IPv4-only; without IPv6 their links stay quiet (no link-local multicast
# for the datapath to report).
no_ipv6() { ip netns exec "$1" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1; }
no_ipv6 "$node"

declare -A pod_ns pod_ip
n=0
add_pod() { # NAME IP
    local name=$1 ip=$2 ns=sw-$1-$id dev=lxc$n
    n=$((n + 1))
    ip netns add "$ns"
    namespaces+=("$ns")
    no_ipv6 "$ns"
    ip -n "$node" link add "$dev" type veth peer name eth0 netns "$ns"
    ip -n "$node" addr add 169.254.1.1/32 dev "$dev"
    ip -n "$node" link set "$dev" up
    ip -n "$node" route add "$ip/32" dev "$dev"
    ip -n "$ns" addr add "$ip/32" dev eth0
    ip -n "$ns" link set lo up
    ip -n "$ns" link set eth0 up
    ip -n "$ns" route add 169.254.1.1 dev eth0 scope link
    ip -n "$ns" route add default via 169.254.1.1 dev eth0
    pod_ns[$name]=$ns
    pod_ip[$name]=$ip
    printf '  %-10s %-12s namespace %-22s node-side device %s\n' "$name" "$ip" "$ns" "$dev"
}
echo "  node       namespace $node (forwarding; every pod routes via 169.254.1.1)"
add_pod deathstar 10.200.1.10   # org=empire, class=deathstar (examples/starwars/pods.yaml)
add_pod tiefighter 10.200.1.11  # org=empire
add_pod xwing 10.200.1.12       # org=alliance
add_pod basicdeploy 10.244.0.32 # basics/basicdeploy-65ff8695df-p58zr, org=cilium101 (examples/to-google)
add_pod coredns 10.244.0.14     # kube-system/coredns-0, k8s-app=kube-dns
deathstar=${pod_ip[deathstar]}
# The internet: one namespace outside the cluster (no pod object names it) holding
# google.com's and github.com's addresses, routed from the node through ext0.
internet=sw-internet-$id
ip netns add "$internet"
namespaces+=("$internet")
no_ipv6 "$internet"
ip -n "$node" link add ext0 type veth peer name eth0 netns "$internet"
ip -n "$node" addr add 169.254.1.1/32 dev ext0
ip -n "$node" link set ext0 up
ip -n "$internet" link set lo up
ip -n "$internet" link set eth0 up
ip -n "$internet" route add 169.254.1.1 dev eth0 scope link
ip -n "$internet" route add default via 169.254.1.1 dev eth0
for ip in 142.250.74.46 140.82.114.3; do
    ip -n "$internet" addr add "$ip/32" dev eth0
    ip -n "$node" route add "$ip/32" dev ext0
done
printf '  %-10s %-12s namespace %-22s node-side device %s\n' internet "142.250.74.46 140.82.114.3" "$internet" ext0

# The pods' manifests are what the agent learns endpoints from (spec.nodeName, status.podIP).
mkdir -p "$manifests"
cp examples/starwars/pods.yaml "$manifests/"
cp examples/to-google/pods.yaml "$manifests/to-google-pods.yaml"

echo "  deathstar: examples/starwars/deathstar.py on port 80"
ip netns exec "${pod_ns[deathstar]}" python3 examples/starwars/deathstar.py --port 80 \
    >"$work/deathstar.log" 2>&1 &
pids+=($!) names+=("the deathstar server")

wait_for() { # WHAT TRIES COMMAND...: retry every 0.1 s
    local what=$1 tries=$2
    shift 2
    local i j
    for ((i = 0; i < tries; i++)); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        for j in "${!pids[@]}"; do
            kill -0 "${pids[$j]}" 2>/dev/null || die "${names[$j]} exited while waiting for $what (its log follows)"
        done
        sleep 0.1
    done
    die "timed out waiting for $what"
}
wait_for "the deathstar server" 50 \
    ip netns exec "${pod_ns[deathstar]}" curl -sf --max-time 1 http://127.0.0.1/v1/healthz

echo "  coredns: dnsmasq, authoritative for google.com and github.com"
ip netns exec "${pod_ns[coredns]}" dnsmasq --keep-in-foreground --no-resolv --no-hosts --no-poll \
    --pid-file= --user=root --bind-interfaces --listen-address="${pod_ip[coredns]}" --log-facility=- \
    --host-record=google.com,142.250.74.46,300 --host-record=github.com,140.82.114.3,300 \
    >"$work/coredns.log" 2>&1 &
pids+=($!) names+=("dnsmasq (coredns)")
echo "  internet: examples/to-google/web.py on port 80 of every address"
ip netns exec "$internet" python3 examples/to-google/web.py --port 80 >"$work/internet.log" 2>&1 &
pids+=($!) names+=("the internet's web server")
# `ip netns exec` mounts /etc/netns/NS/resolv.conf over /etc/resolv.conf: the pod's resolver
# asks the cluster DNS, as kubelet sets it up.
mkdir -p "/etc/netns/${pod_ns[basicdeploy]}"
echo "nameserver ${pod_ip[coredns]}" >"/etc/netns/${pod_ns[basicdeploy]}/resolv.conf"

step "Start the agent and the proxies in the node"
agent_cmd=(nsenter "--net=/run/netns/$node" "$agent" run --source "dir:$manifests"
    --node-name node1 --xds-socket "$sock" --bpf-dir "$bpf_dir" --fqdn-state "$work/fqdn-cache.json")
proxy_cmd=(ip netns exec "$node" "$proxy" --agent "unix:$sock"
    --ingress 0.0.0.0:15002 --egress 0.0.0.0:15001 --mark 0x300 --ingress-mark 0x400
    --upstream-source original --admin 127.0.0.1:9901)
echo "\$ ${agent_cmd[*]}"
agent_log=$work/agent.log
NODE_AGENT_LOG=${NODE_AGENT_LOG:-info} "${agent_cmd[@]}" >"$agent_log" 2>&1 &
agent_slot=${#pids[@]} # where the agent is in pids (step 4 restarts it)
pids+=($!) names+=("node-agent")
wait_for "the agent's socket $sock" 100 test -S "$sock"
echo "\$ ${proxy_cmd[*]}"
"${proxy_cmd[@]}" >"$work/proxy.log" 2>&1 &
pids+=($!) names+=("l7-proxy")
wait_for "the proxy to be ready" 100 \
    ip netns exec "$node" curl -sf --max-time 1 http://127.0.0.1:9901/ready
dns_proxy_cmd=(ip netns exec "$node" "$dns_proxy" --agent "unix:$sock" --mode transparent
    --listen-port 15053 --mark 0x300 --admin 127.0.0.1:9902)
echo "\$ ${dns_proxy_cmd[*]}"
"${dns_proxy_cmd[@]}" >"$work/dns-proxy.log" 2>&1 &
pids+=($!) names+=("dns-proxy")
wait_for "the DNS proxy to be ready" 100 \
    ip netns exec "$node" curl -sf --max-time 1 http://127.0.0.1:9902/ready
attached() { # every pod's node-side device carries the agent's tc program
    local dev
    for dev in lxc0 lxc1 lxc2 lxc3 lxc4; do
        ip netns exec "$node" tc filter show dev "$dev" ingress | grep -q bpf || return 1
    done
}
wait_for "the datapath programs on the pod devices" 100 attached
echo "  agent: maps pinned in $bpf_dir, tc programs on lxc0 .. lxc4; proxies ready"

# --- the story -----------------------------------------------------------------------------------
failures=0
flows_seen=0
flow_count() { "$agent" observe --xds-socket "$sock" -o json --last 1000000 2>/dev/null | wc -l; }
observe() { # the flow records of this step
    local now
    now=$(flow_count)
    echo
    echo "flows: \$ node-agent observe --xds-socket $sock -o compact --last $((now - flows_seen))"
    "$agent" observe --xds-socket "$sock" -o compact --last "$((now - flows_seen))" 2>&1 | sed 's/^/  /' || true
    flows_seen=$now
}
programmed() { grep -c "datapath programmed" "$agent_log" || true; }
programmed_since() { [ "$(programmed)" -gt "$1" ]; }
proxy_in_sync() { # the proxy ACKed the agent's current version of every type
    "$agent" status --xds-socket "$sock" -o json | python3 -c '
import json, sys
s = json.load(sys.stdin)
ok = s["clients"] and all(t["acked_version"] == s["versions"].get(t["type"])
                          for c in s["clients"] for t in c["types"])
sys.exit(0 if ok else 1)'
}
apply_policy() { # FILE [NAME]: what `kubectl apply -f FILE` does here
    local before name=${2:-policy.yaml}
    before=$(programmed)
    echo "\$ cp $1 $manifests/$name    # kubectl apply -f $1"
    cp "$1" "$work/$name.new"
    mv "$work/$name.new" "$manifests/$name" # whole, never half-written
    wait_for "the agent to program the datapath" 50 programmed_since "$before"
    wait_for "the proxy to acknowledge the new policy" 50 proxy_in_sync
    echo "(applied: the agent reprogrammed the datapath's maps and the proxy acknowledged the new policy)"
}
ship() { # POD EXPECT-EXIT EXPECT-OUTPUT ARGS...: run curl in POD and check what it did
    local pod=$1 want_rc=$2 want_out=$3 out rc
    shift 3
    local cmd=(curl -s --max-time 2 "$@")
    printf '\n%s$ %s\n' "$pod" "ip netns exec ${pod_ns[$pod]} ${cmd[*]}"
    set +e
    out=$(ip netns exec "${pod_ns[$pod]}" "${cmd[@]}" 2>&1)
    rc=$?
    set -e
    if [ -n "$out" ]; then printf '%s\n' "$out"; fi
    if [ "$rc" = 28 ]; then echo "(no answer within --max-time 2: curl exit code 28)"; fi
    local expected="\"$want_out\" (curl exit code 0)"
    if [ "$want_rc" = 28 ]; then expected="no answer: the datapath drops it (curl exit code 28)"; fi
    if [ "$rc" = "$want_rc" ] && [[ "$out" == "$want_out"* ]]; then
        bold "ok, as expected: $expected"
    else
        failures=$((failures + 1))
        bold "FAILED: expected $expected; got curl exit code $rc and the output above"
    fi
}

flows_seen=$(flow_count)

step "1. No policy yet: every ship may land"
ship tiefighter 0 "Ship landed" -XPOST "$deathstar/v1/request-landing"
ship xwing 0 "Ship landed" -XPOST "$deathstar/v1/request-landing"
observe

step "2. L3/L4 policy: only org=empire may reach the deathstar, on 80/TCP"
apply_policy examples/starwars/sw_l3_l4_policy.yaml
ship tiefighter 0 "Ship landed" -XPOST "$deathstar/v1/request-landing"
ship xwing 28 "" -XPOST "$deathstar/v1/request-landing"
echo "but an empire ship may still do anything on port 80:"
ship tiefighter 0 "Panic: deathstar exploded" -XPUT "$deathstar/v1/exhaust-port"
observe

step "3. L7 policy: empire ships may only POST /v1/request-landing"
apply_policy examples/starwars/sw_l3_l4_l7_policy.yaml
ship tiefighter 0 "Ship landed" -XPOST "$deathstar/v1/request-landing"
ship tiefighter 0 "Access denied" -XPUT "$deathstar/v1/exhaust-port"
ship xwing 28 "" -XPOST "$deathstar/v1/request-landing"
observe

step "4. The agent restarts: the kernel keeps enforcing the last policy meanwhile"
agent_pid=${pids[$agent_slot]}
echo "\$ kill $agent_pid    # node-agent"
kill -TERM "$agent_pid"
wait "$agent_pid" || true
ship tiefighter 0 "Access denied" -XPUT "$deathstar/v1/exhaust-port"
ship xwing 28 "" -XPOST "$deathstar/v1/request-landing"
echo
echo "\$ ${agent_cmd[*]}"
agent_log=$work/agent-restarted.log
"${agent_cmd[@]}" >"$agent_log" 2>&1 &
pids[$agent_slot]=$!
loaded() { grep -q "datapath loaded" "$work/agent-restarted.log"; }
wait_for "the restarted agent to load the datapath" 100 loaded
wait_for "the proxy to catch up with the restarted agent" 100 proxy_in_sync
grep -h "datapath loaded" "$work/agent-restarted.log" | sed -e 's/\x1b\[[0-9;]*m//g' -e 's/^.*datapath loaded/  datapath loaded/'
echo "(it adopted the pinned maps as they were; the flow records the old agent held are gone, the"
echo " kernel's and the proxy's records of the meantime reach the new one)"
flows_seen=0
ship tiefighter 0 "Ship landed" -XPOST "$deathstar/v1/request-landing"
landing_reported() { "$agent" observe --xds-socket "$sock" -o compact --last 100 | grep -q "http-response FORWARDED"; }
for _ in $(seq 50); do landing_reported && break; sleep 0.1; done # the proxy's reports reconnect too
observe

step "5. toFQDNs (AKS and Cilium 101): DNS to kube-dns through the DNS proxy, then only google.com"
echo "basicdeploy's resolver asks coredns (${pod_ip[coredns]}); no policy selects it yet:"
ship basicdeploy 0 "<HTML>" http://github.com
apply_policy examples/to-google/to-google.yaml to-google.yaml
sed 's/^/  /' examples/to-google/to-google.yaml
echo "google.com's answer reaches the pod only once the datapath allows its address for this pod:"
ship basicdeploy 0 "<HTML>" http://google.com
echo "github.com still resolves (DNS matchPattern \"*\"), but no toFQDNs selector matches it:"
ship basicdeploy 28 "" http://github.com
echo
echo "\$ node-agent fqdn cache list --xds-socket $sock"
"$agent" fqdn cache list --xds-socket "$sock" 2>&1 | sed 's/^/  /'
dns_reported() { "$agent" observe --xds-socket "$sock" -o compact --last 100 | grep -q "DNS Query github.com"; }
for _ in $(seq 50); do dns_reported && break; sleep 0.1; done # the DNS proxy reports in batches
observe

echo
if [ "$failures" = 0 ]; then
    bold "Every step behaved as the story says."
else
    bold "$failures step(s) did not behave as the story says."
    exit 1
fi
