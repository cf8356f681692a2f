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
# The 10.200.0.0/24 addresses exist only inside these namespaces. The coordinator serves both
# its worker endpoint and its HTTP API on its veth address, so it runs the secure setup a real
# cluster needs:
#   1. protected mode: without keys it refuses to bind the worker endpoint beyond loopback, and
#      without tokens to serve the API there, saying what to add; --insecure starts anyway;
#   2. with CURVE keys (deploy/make-secrets.sh, evalctl keygen), the worker allowlist, an API
#      token file and HTTPS (a throwaway CA), both workers connect from their own addresses,
#      while a worker with a key not on the allowlist, and one that claims another worker's
#      name, are refused and counted;
#   3. evalctl and plain HTTP clients on another machine (the w1 namespace) reach the API only
#      with a token: none gets 401, a reader's submit 403; an operator's campaign completes on
#      both workers with the exact expected scores, records its submitter, and the audit log
#      shows the submission and the refusal.
# Namespaces and processes are removed on exit, also on failure; namespaces left by a run that
# was killed (SIGKILL skips the trap) are removed by the next run.
#
# Usage: run-netns-test.sh BIN_DIR SOURCE_DIR
# Exit: 0 passed, 1 failed, 77 skipped (not root, no iproute2 or openssl, or namespaces, veth
# pairs or bridges cannot be created here), with the reason on stdout.
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
command -v openssl >/dev/null || skip "openssl not found; scripts/setup.sh installs it"
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

# --- keys, tokens and a certificate -----------------------------------------------------------
secrets="${tmp}/secrets"
make_secrets "${bin_dir}" "${source_dir}" --token op:operator --token rd:reader --token adm:admin \
  "${secrets}" netns-w1 netns-w2
# A key the coordinator has never heard of, made as an operator would, with a loose umask:
# keygen still leaves the secret readable by its owner only.
(umask 022 && "${bin_dir}/evalctl" keygen "${tmp}/rogue" >/dev/null) || fail "evalctl keygen failed"
check_secret_mode "${tmp}/rogue.secret"
check_secret_mode "${secrets}/workers/netns-w1.secret"
make_tls_cert "${tmp}" "${coord_ip}"
export EVALD_CACERT="${tmp}/ca.crt"
curve_flags=(--curve-secret "${secrets}/coordinator.secret" --worker-keys "${secrets}/worker-keys")
token_flags=(--api-tokens "${secrets}/api-tokens")

# --- protected mode ---------------------------------------------------------------------------
# refused_start NAME WHAT FLAGS...: the coordinator exits at start with an error naming WHAT,
# before it serves anything.
refused_start() {
  local name="$1" what="$2" rc=0
  shift 2
  timeout 20 ip netns exec "${ns_coord}" "${bin_dir}/evald-coordinator" \
    --data-dir "${tmp}/store-${name}" "$@" >"${tmp}/log/${name}.out" 2>"${tmp}/log/${name}.log" || rc=$?
  ((rc != 0 && rc != 124)) || fail "${name}: the coordinator started (exit ${rc}) with $*"
  [[ ! -s "${tmp}/log/${name}.out" ]] || fail "${name}: it served: $(cat "${tmp}/log/${name}.out")"
  grep -q -- "${what}" "${tmp}/log/${name}.log" ||
    fail "${name}: the refusal does not say to add ${what}: $(cat "${tmp}/log/${name}.log")"
}
refused_start no-keys --curve-secret --bind "tcp://${coord_ip}:0" --http 127.0.0.1:0 "${token_flags[@]}"
refused_start no-tokens --api-tokens --bind "tcp://${coord_ip}:0" --http "${coord_ip}:0" "${curve_flags[@]}"
# --insecure starts anyway, and says so.
ip netns exec "${ns_coord}" "${bin_dir}/evald-coordinator" --data-dir "${tmp}/store-insecure" \
  --bind "tcp://${coord_ip}:0" --http "${coord_ip}:0" --insecure \
  >"${tmp}/log/insecure.out" 2>"${tmp}/log/insecure.log" &
insecure_pid=$!
pids+=("${insecure_pid}")
wait_for "the --insecure coordinator's endpoint line" 10 grep -q '"http"' "${tmp}/log/insecure.out"
grep -qi insecure "${tmp}/log/insecure.log" ||
  fail "--insecure logged no warning: $(cat "${tmp}/log/insecure.log")"
kill -TERM "${insecure_pid}"
wait "${insecure_pid}" || fail "the --insecure coordinator did not stop cleanly"
unset 'pids[-1]'
log "protected mode: refused without keys, refused without tokens, started with --insecure"

# --- the coordinator, on its veth address with keys, tokens and TLS ---------------------------
# `ip netns exec` execs the program, so $! is the daemon itself.
ip netns exec "${ns_coord}" "${bin_dir}/evald-coordinator" --data-dir "${tmp}/store" \
  --bind "tcp://${coord_ip}:0" --http "${coord_ip}:0" --heartbeat-ms 100 --worker-timeout-ms 1000 \
  --retry-backoff-ms 20 "${curve_flags[@]}" "${token_flags[@]}" \
  --tls-cert "${tmp}/server.crt" --tls-key "${tmp}/server.key" \
  >"${tmp}/log/endpoints.json" 2>"${tmp}/log/coordinator.log" &
pids+=($!)
wait_for "the coordinator's endpoint line" 10 grep -q '"http"' "${tmp}/log/endpoints.json"
bind="$(json 'd["bind"]' <"${tmp}/log/endpoints.json")"
http="$(json 'd["http"]' <"${tmp}/log/endpoints.json")"
[[ "${bind}" == "tcp://${coord_ip}:"* ]] || fail "coordinator bound to ${bind}, not ${coord_ip}"
[[ "${http}" == "${coord_ip}:"* ]] || fail "coordinator serves its API on ${http}, not ${coord_ip}"
server="https://${http}"
# Clients run on another machine: the w1 namespace, across the bridge.
evalctl_as() {
  local token="$1"
  shift
  EVALD_TOKEN="$(token_of "${secrets}" "${token}")" in_ns "${ns_w1}" "${bin_dir}/evalctl" \
    --server "${server}" --json "$@"
}
evalctl() { evalctl_as op "$@"; }
# http_as TOKEN_NAME METHOD URL [BODY]: a plain HTTP client on w1 ("" for no token).
http_via=(ip netns exec "${ns_w1}")
http_as() {
  local token=""
  [[ -z "$1" ]] || token="$(token_of "${secrets}" "$1")"
  shift
  EVALD_TOKEN="${token}" http_call "$@"
}
log "coordinator serves workers on ${bind} (CURVE) and its API on ${server} (tokens, TLS)"

# --- two workers, each in its own namespace, with its own key ---------------------------------
# start_worker NAMESPACE NAME KEY_FILE LOG
start_worker() {
  PATH="${runners_dir}:${PATH}" ip netns exec "$1" "${bin_dir}/evald-worker" \
    --coordinator "${bind}" --name "$2" --slots 1 --gpus none --heartbeat-ms 100 \
    --labels "netns=$1" --work-dir "${tmp}/work-$2-$4" --curve-secret "$3" \
    --coordinator-key "${secrets}/coordinator.public" 2>"${tmp}/log/$4.log" &
  pids+=($!)
}
start_worker "${ns_w1}" netns-w1 "${secrets}/workers/netns-w1.secret" w1
start_worker "${ns_w2}" netns-w2 "${secrets}/workers/netns-w2.secret" w2
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

# --- workers the coordinator must refuse --------------------------------------------------------
# A key not on the allowlist, and netns-w2's real key under netns-w1's name.
start_worker "${ns_w2}" netns-rogue "${tmp}/rogue.secret" rogue
rogue_pid="${pids[-1]}"
start_worker "${ns_w2}" netns-w1 "${secrets}/workers/netns-w2.secret" impostor
impostor_pid="${pids[-1]}"
auth_failure_reasons() {
  http_as rd GET "${server}/metrics" | json "
len({l.split('reason=\"')[1].split('\"')[0] for l in d['body'].splitlines()
     if l.startswith('evald_worker_auth_failures_total{') and float(l.rsplit(' ', 1)[1]) > 0})"
}
both_refused() { [[ "$(auth_failure_reasons)" -ge 2 ]]; }
wait_for "the coordinator to refuse the unlisted key and the borrowed name" 15 both_refused
kill -TERM "${rogue_pid}" "${impostor_pid}"
wait "${rogue_pid}" "${impostor_pid}" || true
workers="$(evalctl workers | json "' '.join(sorted('%s:%s' % (w['name'], w['state']) for w in d['workers']))")"
[[ "${workers}" == "netns-w1:connected netns-w2:connected" ]] ||
  fail "the refused workers changed the worker list: ${workers}"
log "refused: a worker with an unlisted key and one with another worker's name"

# --- only token holders use the API ------------------------------------------------------------
cat >"${tmp}/campaign.json" <<'SPEC'
{"name": "netns-round1",
 "models": [{"name": "m-a", "params": {"mult": 1, "k": 4}}, {"name": "m-b", "params": {"mult": 3, "k": 2}}],
 "benchmarks": [{"name": "b-x", "examples": 40, "shard_size": 10, "metric": "accuracy", "params": {"offset": 0}},
                {"name": "b-y", "examples": 20, "shard_size": 10, "metric": "accuracy", "params": {"offset": 5}}],
 "runner": {"type": "exec", "command": ["evald-test-runner", "{model}", "{benchmark}", "{shard}"], "timeout_s": 60},
 "max_attempts": 2}
SPEC
no_token="$(http_as "" GET "${server}/v1/campaigns")"
[[ "$(json '"%s %s" % (d["status"], (d["www_authenticate"] or "").split(" ")[0])' <<<"${no_token}")" == "401 Bearer" ]] ||
  fail "a request without a token was not refused with 401 and WWW-Authenticate: Bearer: ${no_token}"
if evalctl_as rd submit "${tmp}/campaign.json" >"${tmp}/log/reader-submit.out" 2>&1; then
  fail "a reader token could submit: $(cat "${tmp}/log/reader-submit.out")"
fi
reader_submit="$(http_as rd POST "${server}/v1/campaigns" "$(cat "${tmp}/campaign.json")")"
[[ "$(json 'd["status"]' <<<"${reader_submit}")" == 403 ]] ||
  fail "a reader's submit was not refused with 403: ${reader_submit}"
[[ "$(http_as rd GET "${server}/v1/campaigns" | json 'd["status"]')" == 200 ]] ||
  fail "a reader token cannot list campaigns"
log "API: no token 401, reader submit 403, reader read 200"

# --- a campaign completes on both ------------------------------------------------------------
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
[[ "$(evalctl status "${campaign}" | json 'd["submitted_by"]')" == op ]] ||
  fail "campaign ${campaign} does not record its submitter op: $(evalctl status "${campaign}")"

# --- the audit log ------------------------------------------------------------------------------
# Only an admin reads it; it holds the operator's submission and the reader's refused one.
[[ "$(http_as op GET "${server}/v1/audit" | json 'd["status"]')" == 403 ]] ||
  fail "an operator could read the audit log"
evalctl_as adm audit >"${tmp}/audit-evalctl.json" ||
  fail "evalctl audit failed: $(cat "${tmp}/audit-evalctl.json")"
http_as adm GET "${server}/v1/audit" >"${tmp}/audit.json"
audit="$(json "' '.join(sorted({'%s:%s' % (e['principal'], e['action']) for e in d['body']['events']
                               if e['principal'] in ('op', 'rd')}))" <"${tmp}/audit.json")"
[[ "${audit}" == *"op:submit"* && "${audit}" == *"rd:refused"* ]] ||
  fail "the audit log lacks op's submit or rd's refusal: $(cat "${tmp}/audit.json")"
log "PASS: campaign ${campaign} completed over the bridge on netns-w1 and netns-w2 with CURVE," \
  "tokens and TLS; rogue workers and weak tokens were refused and audited"
