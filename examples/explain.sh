#!/usr/bin/env bash
# The policy walkthrough on one machine, no cluster: validate the example manifests, then
# explain flows of the Star Wars, bookinfo and to-google stories, then show what one node
# enforces. Run from anywhere: bash examples/explain.sh (no root needed)
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --quiet -p node-agent
agent=target/debug/node-agent

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@" || true; }

step "Validate every example manifest"
run "$agent" policy validate examples

step "Star Wars, L3/L4 policy: only the empire may reach the deathstar on 80/TCP"
sw=(--manifests examples/starwars/pods.yaml)
run "$agent" policy explain "${sw[@]}" --manifests examples/starwars/sw_l3_l4_policy.yaml \
    --from default/tiefighter --to default/deathstar --port 80/TCP
run "$agent" policy explain "${sw[@]}" --manifests examples/starwars/sw_l3_l4_policy.yaml \
    --from default/xwing --to default/deathstar --port 80/TCP

step "Star Wars, L7 policy: tiefighter may land, but not touch the exhaust port"
run "$agent" policy explain "${sw[@]}" --manifests examples/starwars/sw_l3_l4_l7_policy.yaml \
    --from default/tiefighter --to default/deathstar --port 80/TCP --http "POST /v1/request-landing"
run "$agent" policy explain "${sw[@]}" --manifests examples/starwars/sw_l3_l4_l7_policy.yaml \
    --from default/tiefighter --to default/deathstar --port 80/TCP --http "PUT /v1/exhaust-port"

step "Bookinfo: productpage may GET reviews; details gets a 403"
run "$agent" policy explain --manifests examples/bookinfo \
    --from bookinfo/productpage-v1 --to bookinfo/reviews-v1 --port 9080/TCP --http "GET /reviews/0"
run "$agent" policy explain --manifests examples/bookinfo \
    --from bookinfo/details-v1 --to bookinfo/reviews-v1 --port 9080/TCP --http "GET /reviews/0"

step "to-google: DNS goes through the proxy; google.com's address needs a DNS answer first"
run "$agent" policy explain --manifests examples/to-google \
    --from basics/basicdeploy-65ff8695df-p58zr --to kube-system/coredns-0 --port 53/UDP --dns google.com
run "$agent" policy explain --manifests examples/to-google \
    --from basics/basicdeploy-65ff8695df-p58zr --to 140.82.112.3 --port 80/TCP

step "What node1 enforces in the Star Wars L7 story"
run "$agent" policy show "${sw[@]}" --manifests examples/starwars/sw_l3_l4_l7_policy.yaml --node node1
