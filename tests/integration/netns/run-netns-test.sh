#!/usr/bin/env bash
# evald across machines, as far as one machine can show it: the coordinator and two workers each
# in their own network namespace, joined by veth pairs to a bridge in a fourth "switch"
# namespace, so ZeroMQ traffic crosses a real link between three network stacks and never
# touches loopback:
#
#   evald-<pid>-c  (coordinator, 10.200.0.1) --veth--+
#   evald-<pid>-w1 (worker,      10.200.0.2) --veth--+-- bridge in evald-<pid>-sw
#   evald-<pid>-w2 (worker,      10.200.0.3) --veth--+
#
# The 10.200.0.0/24 addresses exist only inside these namespaces. The coordinator binds its
# worker endpoint to its veth address; its HTTP API stays on 127.0.0.1 inside its namespace, so
# evalctl runs there (ip netns exec). The test checks that both workers connect from their own
# addresses, and that a campaign completes on both with the exact expected scores. Namespaces
# and processes are removed on exit, also on failure; namespaces left by a run that was killed
# (SIGKILL skips the trap) are removed by the next run.
#
# Usage: run-netns-test.sh BIN_DIR SOURCE_DIR
# Exit: 0 passed, 1 failed, 77 skipped (not root, no iproute2, or namespaces, veth pairs or
# bridges cannot be created here), with the reason on stdout.
set -euo pipefail

bin_dir="$(cd "${1:?usage: run-netns-test.sh BIN_DIR SOURCE_DIR}" && pwd)"
source_dir="$(cd "${2:?usage: run-netns-test.sh BIN_DIR SOURCE_DIR}" && pwd)"
runners_dir="${source_dir}/tests/integration/runners"
readonly kNamePrefix=evald-t
test_tag=netns-test
# shellcheck source=tests/integration/script_lib.sh
source "${source_dir}/tests/integration/script_lib.sh"

((EUID == 0)) || skip "needs root to create network namespaces"
command -v ip >/dev/null || skip "ip (iproute2) not found; scripts/setup.sh installs it"
command -v ss >/dev/null || skip "ss (iproute2) not found; scripts/setup.sh installs it"
command -v python3 >/dev/null || skip "python3 not found"
for binary in evald-coordinator evald-worker evalctl; do
  [[ -x "${bin_dir}/${binary}" ]] || fail "${bin_dir}/${binary} is not built"
done

# Namespaces of earlier runs that died without their trap (their pid is gone).
for stale in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^${kNamePrefix}-[0-9]*-" || true); do
  owner="${stale#"${kNamePrefix}"-}"
  owner="${owner%%-*}"
  if ! kill -0 "${owner}" 2>/dev/null; then
    ip netns delete "${stale}" 2>/dev/null && log "removed stale namespace ${stale}"
  fi
done

id="${kNamePrefix}-$$"
ns_switch="${id}-sw"
ns_coord="${id}-c"
ns_w1="${id}-w1"
ns_w2="${id}-w2"
namespaces=()
pids=()
tmp="$(mktemp -d /tmp/evald-netns.XXXXXX)"
mkdir -p "${tmp}/log"

teardown() {
  local rc=$? pid ns
  trap - EXIT INT TERM
  set +e
  for pid in "${pids[@]}"; do kill -TERM "${pid}" 2>/dev/null; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 50); do
      kill -0 "${pid}" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "${pid}" 2>/dev/null
    wait "${pid}" 2>/dev/null
  done
  if ((rc != 0 && rc != kSkip)); then
    log "FAILED (exit ${rc}); logs follow"
    for f in "${tmp}"/log/*; do
      [[ -f "${f}" ]] && printf '==> %s <==\n%s\n' "${f##*/}" "$(tail -c 4000 "${f}")"
    done
  fi
  # Deleting a namespace destroys the veth ends and the bridge in it.
  for ns in "${namespaces[@]}"; do ip netns delete "${ns}" 2>/dev/null; done
  rm -rf "${tmp}"
  exit "${rc}"
}
trap teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

in_ns() {
  local ns="$1"
  shift
  ip netns exec "${ns}" "$@"
}

# --- the network ------------------------------------------------------------------------------
for ns in "${ns_switch}" "${ns_coord}" "${ns_w1}" "${ns_w2}"; do
  ip netns add "${ns}" 2>"${tmp}/log/ip.err" ||
    skip "cannot create network namespace ${ns}: $(cat "${tmp}/log/ip.err")"
  namespaces+=("${ns}")
  ip -n "${ns}" link set lo up
done
ip -n "${ns_switch}" link add br0 type bridge 2>"${tmp}/log/ip.err" ||
  skip "cannot create a bridge: $(cat "${tmp}/log/ip.err")"
ip -n "${ns_switch}" link set br0 up
# Interface names are per namespace, so they can be short and fixed: each pair is created with
# one end (eth0) in its machine's namespace and the other (portN) directly in the switch's.
address=1
for ns in "${ns_coord}" "${ns_w1}" "${ns_w2}"; do
  port="port${address}"
  ip -n "${ns}" link add eth0 type veth peer name "${port}" netns "${ns_switch}" \
    2>"${tmp}/log/ip.err" || skip "cannot create a veth pair: $(cat "${tmp}/log/ip.err")"
  ip -n "${ns_switch}" link set "${port}" master br0 up
  ip -n "${ns}" addr add "10.200.0.${address}/24" dev eth0
  ip -n "${ns}" link set eth0 up
  address=$((address + 1))
done
coord_ip=10.200.0.1
log "namespaces ${ns_coord} (${coord_ip}), ${ns_w1} (10.200.0.2), ${ns_w2} (10.200.0.3) on a bridge"

# --- keys: the bind is not loopback, so the worker socket runs CURVE ---------------------------
mkdir -p "${tmp}/keys"
for key in coordinator netns-w1 netns-w2; do
  "${bin_dir}/evalctl" keygen "${tmp}/keys/${key}" >/dev/null || fail "evalctl keygen ${key}"
done
for key in netns-w1 netns-w2; do
  echo "${key} $(cat "${tmp}/keys/${key}.public")"
done >"${tmp}/keys/worker-keys"

# --- the coordinator, bound to its veth address -----------------------------------------------
# `ip netns exec` execs the program, so $! is the daemon itself.
ip netns exec "${ns_coord}" "${bin_dir}/evald-coordinator" --data-dir "${tmp}/store" \
  --bind "tcp://${coord_ip}:0" --http 127.0.0.1:0 --heartbeat-ms 100 --worker-timeout-ms 1000 \
  --curve-secret "${tmp}/keys/coordinator.secret" --worker-keys "${tmp}/keys/worker-keys" \
  --retry-backoff-ms 20 >"${tmp}/log/endpoints.json" 2>"${tmp}/log/coordinator.log" &
pids+=($!)
wait_for "the coordinator's endpoint line" 10 grep -q '"http"' "${tmp}/log/endpoints.json"
bind="$(json 'd["bind"]' <"${tmp}/log/endpoints.json")"
http="$(json 'd["http"]' <"${tmp}/log/endpoints.json")"
[[ "${bind}" == "tcp://${coord_ip}:"* ]] || fail "coordinator bound to ${bind}, not ${coord_ip}"
evalctl() { in_ns "${ns_coord}" "${bin_dir}/evalctl" --server "http://${http}" --json "$@"; }
log "coordinator serves workers on ${bind} and its API on ${http} inside ${ns_coord}"

# --- two workers, each in its own namespace ---------------------------------------------------
for worker in w1 w2; do
  ns_var="ns_${worker}"
  PATH="${runners_dir}:${PATH}" ip netns exec "${!ns_var}" "${bin_dir}/evald-worker" \
    --coordinator "${bind}" --name "netns-${worker}" --slots 1 --gpus none --heartbeat-ms 100 \
    --labels "netns=${!ns_var}" --work-dir "${tmp}/${worker}" \
    --curve-secret "${tmp}/keys/netns-${worker}.secret" \
    --coordinator-key "${tmp}/keys/coordinator.public" 2>"${tmp}/log/${worker}.log" &
  pids+=($!)
done
workers_connected() {
  evalctl workers | json "sorted(w['name'] for w in d['workers'] if w['state'] == 'connected')" |
    grep -qx "\['netns-w1', 'netns-w2'\]"
}
wait_for "both workers to connect across the bridge" 15 workers_connected

# The coordinator's side of the link: one TCP connection from each worker's own address.
port="${bind##*:}"
peers="$(in_ns "${ns_coord}" ss -Htn state established "( sport = :${port} )" |
  awk '{print $4}' | sed 's/:[0-9]*$//' | sort | tr '\n' ' ')"
[[ "${peers}" == "10.200.0.2 10.200.0.3 " ]] ||
  fail "expected connections from 10.200.0.2 and 10.200.0.3 on ${coord_ip}:${port}, got: ${peers}"
log "coordinator has connections from ${peers}"

# --- a campaign completes on both ------------------------------------------------------------
cat >"${tmp}/campaign.json" <<'SPEC'
{"name": "netns-round1",
 "models": [{"name": "m-a", "params": {"mult": 1, "k": 4}}, {"name": "m-b", "params": {"mult": 3, "k": 2}}],
 "benchmarks": [{"name": "b-x", "examples": 40, "shard_size": 10, "metric": "accuracy", "params": {"offset": 0}},
                {"name": "b-y", "examples": 20, "shard_size": 10, "metric": "accuracy", "params": {"offset": 5}}],
 "runner": {"type": "exec", "command": ["evald-test-runner", "{model}", "{benchmark}", "{shard}"], "timeout_s": 60},
 "max_attempts": 2}
SPEC
campaign="$(evalctl submit "${tmp}/campaign.json" | json 'd["id"]')"
campaign_succeeded() { [[ "$(evalctl status "${campaign}" | json 'd["state"]')" == succeeded ]]; }
wait_for "campaign ${campaign} to succeed" 30 campaign_succeeded

# Both workers took part, every shard ran once.
used="$(evalctl shards "${campaign}" | json "
' '.join(sorted({s['worker'] for s in d['shards']})) + ' ' +
str(sum(1 for s in d['shards'] if s['state'] == 'succeeded' and s['attempts'] == 1))")"
[[ "${used}" == "netns-w1 netns-w2 12" ]] ||
  fail "expected 12 shards succeeded at the first attempt on netns-w1 and netns-w2, got: ${used}"
evalctl results "${campaign}" >"${tmp}/results.json"
[[ "$(json 'd["state"]' <"${tmp}/results.json")" == succeeded ]] ||
  fail "leaderboard not succeeded: $(cat "${tmp}/results.json")"
check_scores "${tmp}/results.json" '{"m-a": [1, 4], "m-b": [3, 2]}' '{"b-x": [40, 0], "b-y": [20, 5]}'
log "PASS: campaign ${campaign} completed over the bridge on netns-w1 and netns-w2"
