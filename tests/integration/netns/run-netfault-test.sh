#!/usr/bin/env bash
# evald over a broken network: the coordinator and two workers each in their own network
# namespace, joined by veth pairs to a bridge (as in run-netns-test.sh), and then the links fail:
#
#   partition  one worker's link goes down for longer than --worker-timeout-ms, then comes back.
#              The coordinator must declare that worker lost when the timeout has passed since
#              it last heard from it (the timestamp of its "worker lost" log line, measured from
#              the moment the link went down, is the timeout give or take a heartbeat), queue its
#              shards again, and after the link heals the worker reconnects and its late results
#              count nothing twice.
#   netem      every link loses 30 % of its packets, then every link delays them by 200 ms with
#              50 ms jitter (tc qdisc ... netem). Needs the kernel's sch_netem; without it the
#              test is skipped, naming what is missing.
#   congestion every port of the switch is narrow (32 kbit/s) with a short queue (tc qdisc ...
#              tbf, a token bucket that kernels without sch_netem still have): packets wait in
#              the queue, and those that find it full are dropped. The test checks that packets
#              really waited and were dropped; workers are often declared lost on the way.
#
# Each mode runs a campaign through the fault and checks the leaderboard against the exact scores
# of the test runner's formula, every shard succeeded, every shard's count equal to its range, and
# the coordinator's durable per-cell shard counts equal to the number of shards: nothing counted
# twice. Namespaces and processes are removed on exit, also on failure.
#
# Usage: run-netfault-test.sh BIN_DIR SOURCE_DIR partition|netem|congestion
# Exit: 0 passed, 1 failed, 77 skipped (not root, no iproute2, namespaces or veth pairs cannot be
# created here, or the qdisc the mode needs is missing), with the reason on stdout.
set -euo pipefail

bin_dir="$(cd "${1:?usage: run-netfault-test.sh BIN_DIR SOURCE_DIR MODE}" && pwd)"
source_dir="$(cd "${2:?usage: run-netfault-test.sh BIN_DIR SOURCE_DIR MODE}" && pwd)"
mode="${3:?usage: run-netfault-test.sh BIN_DIR SOURCE_DIR partition|netem|congestion}"
[[ "${mode}" == partition || "${mode}" == netem || "${mode}" == congestion ]] || {
  echo "unknown mode ${mode}: partition, netem or congestion" >&2
  exit 1
}
runners_dir="${source_dir}/tests/integration/runners"
readonly kNamePrefix=evald-f
readonly kHeartbeatMs=200
readonly kWorkerTimeoutMs=2000
test_tag="netfault-${mode}"
# shellcheck source=tests/integration/script_lib.sh
source "${source_dir}/tests/integration/script_lib.sh"

((EUID == 0)) || skip "needs root to create network namespaces"
command -v ip >/dev/null || skip "ip (iproute2) not found; scripts/setup.sh installs it"
command -v tc >/dev/null || skip "tc (iproute2) not found; scripts/setup.sh installs it"
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
tmp="$(mktemp -d /tmp/evald-netfault.XXXXXX)"
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
  for ns in "${namespaces[@]}"; do ip netns delete "${ns}" 2>/dev/null; done
  rm -rf "${tmp}"
  exit "${rc}"
}
trap teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

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
address=1
for ns in "${ns_coord}" "${ns_w1}" "${ns_w2}"; do
  ip -n "${ns}" link add eth0 type veth peer name "port${address}" netns "${ns_switch}" \
    2>"${tmp}/log/ip.err" || skip "cannot create a veth pair: $(cat "${tmp}/log/ip.err")"
  ip -n "${ns_switch}" link set "port${address}" master br0 up
  ip -n "${ns}" addr add "10.201.0.${address}/24" dev eth0
  ip -n "${ns}" link set eth0 up
  address=$((address + 1))
done
coord_ip=10.201.0.1
if [[ "${mode}" == netem ]]; then
  # The probe: a qdisc that changes nothing yet, on the coordinator's link.
  ip netns exec "${ns_coord}" tc qdisc add dev eth0 root netem delay 0ms 2>"${tmp}/log/tc.err" ||
    skip "tc netem is not available (the kernel lacks the sch_netem qdisc, CONFIG_NET_SCH_NETEM):" \
      "$(cat "${tmp}/log/tc.err")"
  ip netns exec "${ns_coord}" tc qdisc del dev eth0 root
fi
if [[ "${mode}" == congestion ]]; then
  ip netns exec "${ns_coord}" tc qdisc add dev eth0 root tbf rate 1gbit burst 64kb latency 10ms \
    2>"${tmp}/log/tc.err" ||
    skip "tc tbf is not available (the kernel lacks the sch_tbf qdisc, CONFIG_NET_SCH_TBF):" \
      "$(cat "${tmp}/log/tc.err")"
  ip netns exec "${ns_coord}" tc qdisc del dev eth0 root
fi
log "namespaces ${ns_coord} (${coord_ip}), ${ns_w1}, ${ns_w2} on a bridge"

# --- coordinator and workers --------------------------------------------------------------------
# Plain TCP inside namespaces nobody else can reach; the secure setup has its own test.
ip netns exec "${ns_coord}" "${bin_dir}/evald-coordinator" --data-dir "${tmp}/store" \
  --bind "tcp://${coord_ip}:0" --http "${coord_ip}:0" --insecure \
  --heartbeat-ms "${kHeartbeatMs}" --worker-timeout-ms "${kWorkerTimeoutMs}" --retry-backoff-ms 20 \
  >"${tmp}/log/endpoints.json" 2>"${tmp}/log/coordinator.log" &
pids+=($!)
wait_for "the coordinator's endpoint line" 10 grep -q '"http"' "${tmp}/log/endpoints.json"
bind="$(json 'd["bind"]' <"${tmp}/log/endpoints.json")"
server="http://$(json 'd["http"]' <"${tmp}/log/endpoints.json")"
# Clients run next to the coordinator, so the faults below hit only coordinator <-> worker traffic.
evalctl() { ip netns exec "${ns_coord}" "${bin_dir}/evalctl" --server "${server}" --json "$@"; }
metric() {
  http_via=(ip netns exec "${ns_coord}")
  http_call GET "${server}/metrics" | json "sum(float(l.rsplit(' ', 1)[1]) for l in d['body'].splitlines()
    if l.startswith('$1') and all(x in l for x in '$2'.split(',') if x))"
}

start_worker() {
  PATH="${runners_dir}:${PATH}" ip netns exec "$1" "${bin_dir}/evald-worker" \
    --coordinator "${bind}" --name "$2" --slots 2 --gpus none --heartbeat-ms "${kHeartbeatMs}" \
    --work-dir "${tmp}/work-$2" 2>"${tmp}/log/$2.log" &
  pids+=($!)
}
start_worker "${ns_w1}" nf-w1
start_worker "${ns_w2}" nf-w2
workers_connected() {
  [[ "$(evalctl workers | json "sorted(w['name'] for w in d['workers'] if w['state'] == 'connected')")" == "['nf-w1', 'nf-w2']" ]]
}
wait_for "both workers to connect across the bridge" 15 workers_connected

# run_campaign NAME SLEEP_MS: submits a 2 x 2 campaign (24 shards) of evald-test-runner shards
# that take SLEEP_MS each; prints its id.
run_campaign() {
  cat >"${tmp}/$1.json" <<SPEC
{"name": "$1",
 "models": [{"name": "m-a", "params": {"mult": 1, "k": 4, "sleep_ms": $2}},
            {"name": "m-b", "params": {"mult": 3, "k": 2, "sleep_ms": $2}}],
 "benchmarks": [{"name": "b-x", "examples": 70, "shard_size": 10, "metric": "accuracy", "params": {"offset": 0}},
                {"name": "b-y", "examples": 45, "shard_size": 9, "metric": "accuracy", "params": {"offset": 5}}],
 "runner": {"type": "exec", "command": ["evald-test-runner", "{model}", "{benchmark}", "{shard}"], "timeout_s": 60},
 "max_attempts": 5}
SPEC
  evalctl submit "${tmp}/$1.json" | json 'd["id"]'
}
readonly kShards=24

# check_exact ID: the campaign succeeded with exact scores, and nothing was counted twice.
check_exact() {
  local campaign="$1"
  campaign_done() {
    local state
    state="$(evalctl status "${campaign}" | json 'd["state"]')"
    [[ "${state}" == failed || "${state}" == cancelled ]] && fail "campaign ${campaign} ended ${state}"
    [[ "${state}" == succeeded ]]
  }
  wait_for "campaign ${campaign} to succeed" 120 campaign_done
  evalctl results "${campaign}" >"${tmp}/results-${campaign}.json"
  check_scores "${tmp}/results-${campaign}.json" '{"m-a": [1, 4], "m-b": [3, 2]}' '{"b-x": [70, 0], "b-y": [45, 5]}'
  local shards
  shards="$(evalctl shards "${campaign}" | json "
sum(1 for s in d['shards'] if s['state'] == 'succeeded' and s['count'] == s['end'] - s['start'])")"
  [[ "${shards}" == "${kShards}" ]] ||
    fail "expected ${kShards} shards succeeded with count = range, got ${shards}"
  counted() {
    [[ "$(metric evald_benchmark_shards "campaign=\"${campaign}\",kind=\"succeeded\"")" == "${kShards}.0" ]]
  }
  wait_for "the durable shard counts of ${campaign} to read ${kShards}" 10 counted
}

if [[ "${mode}" == partition ]]; then
  # --- a partition longer than the worker timeout, then healed ---------------------------------
  campaign="$(run_campaign partition 400)"
  w2_busy() { [[ "$(evalctl workers | json "[w['running'] for w in d['workers'] if w['name'] == 'nf-w2'][0]")" -gt 0 ]]; }
  wait_for "nf-w2 to run a shard" 20 w2_busy
  cut_at="$(date -u +%s.%N)"
  ip -n "${ns_w2}" link set eth0 down
  log "link of nf-w2 down at ${cut_at}"
  wait_for "the coordinator to declare nf-w2 lost" 20 grep -q 'worker_lost worker=nf-w2' "${tmp}/log/coordinator.log"
  lost_at="$(grep -m1 'worker_lost worker=nf-w2' "${tmp}/log/coordinator.log" | cut -d' ' -f1)"
  # The coordinator last heard from nf-w2 at most a heartbeat before the cut, and its timer runs
  # every turn (at most 50 ms apart when idle): the loss comes the timeout after the last message.
  python3 - "${cut_at}" "${lost_at}" "${kWorkerTimeoutMs}" "${kHeartbeatMs}" <<'CHECK' ||
import datetime, sys
cut = float(sys.argv[1])
lost = datetime.datetime.strptime(sys.argv[2], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
    tzinfo=datetime.timezone.utc).timestamp()
timeout, heartbeat = int(sys.argv[3]) / 1000, int(sys.argv[4]) / 1000
took = lost - cut
print(f"declared lost {took:.3f} s after the cut (timeout {timeout} s, heartbeat {heartbeat} s)")
assert timeout - heartbeat - 0.05 <= took <= timeout + 1.0, took
CHECK
    fail "nf-w2 was not declared lost when its timeout passed (cut ${cut_at}, lost ${lost_at})"
  grep -m1 'worker_lost worker=nf-w2' "${tmp}/log/coordinator.log" |
    grep -q "silent for more than ${kWorkerTimeoutMs} ms" ||
    fail "the worker_lost line does not name the timeout: $(grep -m1 'worker_lost worker=nf-w2' "${tmp}/log/coordinator.log")"
  # Longer than the timeout in all: keep the partition a while after the loss, then heal.
  sleep 1
  ip -n "${ns_w2}" link set eth0 up
  log "link of nf-w2 up again"
  wait_for "nf-w2 to reconnect after the partition" 30 workers_connected
  check_exact "${campaign}"
  lost_attempts="$(evalctl shards "${campaign}" | json "
sum(1 for s in d['shards'] for h in s.get('history', []) if h['outcome'] == 'lost')")"
  ((lost_attempts >= 1)) || fail "no attempt of nf-w2 was given up as lost"
  log "PASS: nf-w2 partitioned for longer than ${kWorkerTimeoutMs} ms: declared lost on time," \
    "${lost_attempts} attempt(s) given up and run again, the campaign exact after the heal"
  exit 0
fi

if [[ "${mode}" == congestion ]]; then
  # --- every link narrow, with a short queue ---------------------------------------------------
  # At 32 kbit/s a full-size segment takes about 375 ms to leave; the queue holds what leaves
  # within 50 ms past the bucket, and a packet that finds it full is dropped. The two workers'
  # heartbeats and results meet on the coordinator's port in bursts larger than that, so TCP
  # both waits and retransmits there (tens of drops per run), for longer than the worker timeout
  # now and then. The rate and queue can be changed for an experiment through the environment.
  readonly kCongestionRate=${EVALD_TEST_CONGESTION_RATE:-32kbit}
  readonly kCongestionQueue=${EVALD_TEST_CONGESTION_QUEUE:-50ms}
  # On the switch's ports, towards each namespace: packets there come from another host's TCP,
  # which cannot see this queue (a sender's own qdisc holds its socket back instead of dropping).
  for port in port1 port2 port3; do
    ip netns exec "${ns_switch}" tc qdisc replace dev "${port}" root tbf rate "${kCongestionRate}" \
      burst 1600 latency "${kCongestionQueue}" ||
      fail "tc qdisc replace dev ${port} root tbf failed in ${ns_switch}"
  done
  log "every link: ${kCongestionRate}, queue ${kCongestionQueue}, tail drop"
  campaign="$(run_campaign congestion 50)"
  check_exact "${campaign}"
  # tbf's counters: "dropped" (the queue was full) and "overlimits" (a packet had to wait).
  dropped=0
  waited=0
  for port in port1 port2 port3; do
    stats="$(ip netns exec "${ns_switch}" tc -s qdisc show dev "${port}")"
    log "${port}: $(tr '\n' ' ' <<<"${stats}" | tr -s ' ')"
    dropped=$((dropped + $(sed -n 's/.*dropped \([0-9]*\).*/\1/p' <<<"${stats}" | head -1)))
    waited=$((waited + $(sed -n 's/.*overlimits \([0-9]*\).*/\1/p' <<<"${stats}" | head -1)))
  done
  ((dropped > 0)) || fail "the congested links dropped no packet: the fault did not happen"
  ((waited > 0)) || fail "no packet waited in the congested links' queues: the fault did not happen"
  lost="$(grep -c 'worker_lost' "${tmp}/log/coordinator.log" || true)"
  log "PASS: campaign exact through congested links (${dropped} packets dropped, ${waited} held" \
    "in a queue; workers declared lost on the way: ${lost}), nothing counted twice"
  exit 0
fi

# --- 30 % loss, then 200 ms +- 50 ms delay, on every link -----------------------------------------
netem_all() {
  local ns
  for ns in "${ns_coord}" "${ns_w1}" "${ns_w2}"; do
    ip netns exec "${ns}" tc qdisc replace dev eth0 root netem "$@" ||
      fail "tc qdisc replace dev eth0 root netem $* failed in ${ns}"
  done
}
netem_clear() {
  local ns
  for ns in "${ns_coord}" "${ns_w1}" "${ns_w2}"; do
    ip netns exec "${ns}" tc qdisc del dev eth0 root 2>/dev/null || true
  done
}
netem_all loss 30%
log "30% loss on every link"
campaign="$(run_campaign loss 50)"
check_exact "${campaign}"
netem_clear
wait_for "both workers to be connected after the loss" 30 workers_connected
netem_all delay 200ms 50ms distribution normal
log "200 ms +- 50 ms delay on every link"
campaign="$(run_campaign delay 50)"
check_exact "${campaign}"
netem_clear
log "PASS: campaigns under 30% loss and under 200 ms +- 50 ms delay ended exact, nothing counted twice"
