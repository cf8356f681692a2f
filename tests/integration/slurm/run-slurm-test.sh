#!/usr/bin/env bash
# deploy/slurm/evald-workers.sbatch against a real Slurm: munged, slurmctld and slurmd (Debian's
# slurm-wlm) configured on loopback in a temp dir, one node "localhost" with 2 CPUs, plus an
# evald-coordinator beside it. It checks that
#   1. `sbatch -n 2` of the shipped script starts two workers that the coordinator lists (with
#      their Slurm labels), and a campaign completes on them with the exact expected scores;
#   2. `scancel` of the job makes both workers drain and leave (SIGTERM reached them through
#      srun and exec), the shards they were running go back to pending, and a worker started
#      afterwards finishes the campaign, so nothing held by the Slurm workers is lost.
# The cluster runs the secure setup: CURVE keys made with `evalctl keygen` (through
# deploy/make-secrets.sh), the workers' keys in a node key directory as deploy/slurm/README.md
# describes it (so each worker is named after its key: localhost-0, localhost-1), the
# coordinator with --curve-secret and --worker-keys, and an API token file, with a token on every
# evalctl call; at the end, the audit log names the token behind each submission.
# Everything (daemons, jobs, temp dir) is torn down on exit, also on failure.
#
# Usage: run-slurm-test.sh BIN_DIR SOURCE_DIR
# Exit: 0 passed, 1 failed, 77 skipped (not root, Slurm or munge not installed, or the daemons
# cannot run here), with the reason on stdout. EVALD_SLURM_KEEP=1 keeps the temp dir.
set -euo pipefail

bin_dir="$(cd "${1:?usage: run-slurm-test.sh BIN_DIR SOURCE_DIR}" && pwd)"
source_dir="$(cd "${2:?usage: run-slurm-test.sh BIN_DIR SOURCE_DIR}" && pwd)"
sbatch_script="${source_dir}/deploy/slurm/evald-workers.sbatch"
runners_dir="${source_dir}/tests/integration/runners"
test_tag=slurm-test
# shellcheck source=tests/integration/script_lib.sh
source "${source_dir}/tests/integration/script_lib.sh"

# shellcheck source=tests/integration/slurm/slurm_cluster.sh
source "${source_dir}/tests/integration/slurm/slurm_cluster.sh"

for binary in evald-coordinator evald-worker evalctl; do
  [[ -x "${bin_dir}/${binary}" ]] || {
    echo "FAIL: ${bin_dir}/${binary} is not built"
    exit 1
  }
done

slurm_cluster_start 2
coordinator_pid=""
job_ids=()

# --- keys and tokens --------------------------------------------------------------------------
# Slurm names the one node "localhost", so its workers' keys are localhost-0 and localhost-1;
# after-slurm is the worker started outside Slurm at the end.
secrets="${tmp}/secrets"
make_secrets "${bin_dir}" "${source_dir}" --token tester:submitter --token auditor:admin \
  "${secrets}" localhost-0 localhost-1 after-slurm
check_secret_mode "${secrets}/coordinator.secret"
# The node's key directory: the coordinator's public key and this node's worker keys.
key_dir="${tmp}/keys"
install -d -m 0700 "${key_dir}"
install -m 0644 "${secrets}/coordinator.public" "${key_dir}/"
install -m 0400 "${secrets}/workers/localhost-0.secret" "${secrets}/workers/localhost-1.secret" "${key_dir}/"

# --- the coordinator --------------------------------------------------------------------------
"${bin_dir}/evald-coordinator" --data-dir "${tmp}/store" --bind tcp://127.0.0.1:0 \
  --http 127.0.0.1:0 --heartbeat-ms 100 --worker-timeout-ms 1000 --retry-backoff-ms 20 \
  --curve-secret "${secrets}/coordinator.secret" --worker-keys "${secrets}/worker-keys" \
  --api-tokens "${secrets}/api-tokens" \
  >"${tmp}/log/endpoints.json" 2>"${tmp}/log/coordinator.log" &
coordinator_pid=$!
pids+=("${coordinator_pid}")
wait_for "the coordinator's endpoint line" 10 grep -q '"http"' "${tmp}/log/endpoints.json"
bind="$(json 'd["bind"]' <"${tmp}/log/endpoints.json")"
http="$(json 'd["http"]' <"${tmp}/log/endpoints.json")"
export EVALD_SERVER="http://${http}"
# Every call below carries the submitter's token; without it the API answers 401.
export EVALD_TOKEN
EVALD_TOKEN="$(token_of "${secrets}" tester)"
evalctl() { "${bin_dir}/evalctl" --json "$@"; }
[[ "$(EVALD_TOKEN='' http_call GET "${EVALD_SERVER}/v1/workers" | json 'd["status"]')" == 401 ]] ||
  fail "the API answered a request without a token"
log "coordinator: workers ${bind} (CURVE), API ${EVALD_SERVER} (tokens)"

# --- submit the shipped script: 2 tasks on the one node ---------------------------------------
# The workers run evald-test-runner from the test runners dir; sbatch's default --export=ALL
# passes PATH and the EVALD_* settings to every task.
submit_workers() {
  PATH="${runners_dir}:${PATH}" EVALD_WORKER_BIN="${bin_dir}/evald-worker" EVALD_SLOTS=1 \
    EVALD_WORK_ROOT="${tmp}/jobs" EVALD_DRAIN_TIMEOUT_MS=1000 EVALD_HEARTBEAT_MS=100 \
    EVALD_LABELS=pool=slurm-test EVALD_KEY_DIR="${key_dir}" \
    sbatch --parsable --ntasks=2 --ntasks-per-node=2 --output="${tmp}/log/job-%j.log" \
    "${sbatch_script}" "${bind}"
}
job="$(submit_workers)"
job="${job%%;*}"
job_ids+=("${job}")
log "submitted job ${job}"

slurm_workers_connected() {
  evalctl workers | json "
sum(1 for w in d['workers'] if w['state'] == 'connected'
    and w['labels'].get('slurm_job') == '${job}' and w['labels'].get('pool') == 'slurm-test')
" | grep -qx 2
}
wait_for "both Slurm workers of job ${job} to connect" 20 slurm_workers_connected
evalctl workers >"${tmp}/workers.json"
names="$(json "' '.join(sorted(w['name'] for w in d['workers']))" <"${tmp}/workers.json")"
[[ "${names}" == "localhost-0 localhost-1" ]] ||
  fail "expected workers localhost-0 and localhost-1 (named after their keys), got: ${names}"
grep -q "curve=on" "${tmp}/log/job-${job}.log" ||
  fail "the job did not start its workers with CURVE: $(cat "${tmp}/log/job-${job}.log")"
log "workers connected with their keys: ${names}"

# --- part 1: a campaign completes on the Slurm workers ----------------------------------------
# evald-test-runner: example i of a model is correct iff (i * mult + offset) % 7 < k.
cat >"${tmp}/campaign1.json" <<'SPEC'
{"name": "slurm-round1",
 "models": [{"name": "m-a", "params": {"mult": 1, "k": 4}}, {"name": "m-b", "params": {"mult": 3, "k": 2}}],
 "benchmarks": [{"name": "b-x", "examples": 30, "shard_size": 10, "metric": "accuracy", "params": {"offset": 0}},
                {"name": "b-y", "examples": 20, "shard_size": 10, "metric": "accuracy", "params": {"offset": 5}}],
 "runner": {"type": "exec", "command": ["evald-test-runner", "{model}", "{benchmark}", "{shard}"], "timeout_s": 60},
 "max_attempts": 2}
SPEC
campaign1="$(evalctl submit "${tmp}/campaign1.json" | json 'd["id"]')"
campaign_state() { evalctl status "$1" | json 'd["state"]'; }
campaign_is() { [[ "$(campaign_state "$1")" == "$2" ]]; }
wait_for "campaign ${campaign1} to succeed" 30 campaign_is "${campaign1}" succeeded

# Every shard ran once, on one of the two Slurm workers.
evalctl shards "${campaign1}" | json "
'\n'.join('%s %s %d %s %d' % (s['model'], s['benchmark'], s['index'], s['worker'], s['attempts'])
          for s in d['shards'])" >"${tmp}/shards1.txt"
[[ "$(wc -l <"${tmp}/shards1.txt")" == 10 ]] || fail "expected 10 shards, got: $(cat "${tmp}/shards1.txt")"
if grep -Ev " localhost-[01] 1$" "${tmp}/shards1.txt"; then
  fail "the shards above did not run exactly once on a Slurm worker"
fi
# The leaderboard holds the exact example-weighted scores of the runner's formula.
evalctl results "${campaign1}" >"${tmp}/results1.json"
check_scores "${tmp}/results1.json" '{"m-a": [1, 4], "m-b": [3, 2]}' '{"b-x": [30, 0], "b-y": [20, 5]}'
[[ "$(json "' '.join(r['name'] for r in d['models'])" <"${tmp}/results1.json")" == "m-a m-b" ]] ||
  fail "expected m-a ranked before m-b: $(cat "${tmp}/results1.json")"
log "campaign ${campaign1} succeeded on the Slurm workers with the expected scores"

# --- part 2: scancel while shards run; they go back to the queue -----------------------------
# Two models with one shard each, so each Slurm worker gets one (the scheduler spreads models
# over workers). Every first attempt hangs until its worker kills it; a second attempt succeeds
# at once.
cat >"${tmp}/campaign2.json" <<'SPEC'
{"name": "slurm-round2",
 "models": [{"name": "m-a", "params": {"mult": 1, "k": 4, "hang_attempts": [1]}},
            {"name": "m-b", "params": {"mult": 3, "k": 2, "hang_attempts": [1]}}],
 "benchmarks": [{"name": "b-x", "examples": 10, "shard_size": 10, "metric": "accuracy", "params": {"offset": 0}}],
 "runner": {"type": "exec", "command": ["evald-test-runner", "{model}", "{benchmark}", "{shard}"], "timeout_s": 300},
 "max_attempts": 3}
SPEC
campaign2="$(evalctl submit "${tmp}/campaign2.json" | json 'd["id"]')"
# "model:state:attempts/total_attempts worker" per shard, sorted by model.
shards2() {
  evalctl shards "${campaign2}" | json "
'\n'.join('%s:%s:%d/%d %s' % (s['model'], s['state'], s['attempts'], s['total_attempts'], s['worker'])
           for s in sorted(d['shards'], key=lambda s: s['model']))"
}
running_on_both() {
  shards2 >"${tmp}/shards2.txt"
  [[ "$(grep -cE ":running:1/1 localhost-[01]$" "${tmp}/shards2.txt")" == 2 ]] &&
    [[ "$(cut -d' ' -f2 "${tmp}/shards2.txt" | sort -u | wc -l)" == 2 ]]
}
wait_for "each Slurm worker to run a shard of ${campaign2}" 20 running_on_both
log "Slurm workers hold: $(tr '\n' ' ' <"${tmp}/shards2.txt"); scancel ${job}"

scancel "${job}"
job_gone() { [[ -z "$(squeue --noheader --jobs="${job}" 2>/dev/null)" ]]; }
wait_for "job ${job} to end after scancel" 20 job_gone
# The workers drained: SIGTERM reached them (drain_started), they stopped by themselves.
job_log="${tmp}/log/job-${job}.log"
drains="$(grep -c 'drain_started' "${job_log}" || true)"
[[ "${drains}" == 2 ]] || fail "expected 2 drain_started lines in ${job_log}, got ${drains}"
hand_backs="$(grep -c 'hand_back attempts=1 sent=true' "${job_log}" || true)"
[[ "${hand_backs}" == 2 ]] || fail "expected 2 hand_back lines in ${job_log}, got ${hand_backs}"
no_slurm_worker_connected() {
  evalctl workers | json "
sum(1 for w in d['workers'] if w['name'].startswith('localhost-') and w['state'] == 'connected')
" | grep -qx 0
}
wait_for "the Slurm workers to leave the coordinator" 10 no_slurm_worker_connected

# The shards they held are pending again: handed back at the drain timeout, so each keeps its
# attempt budget (0 used of 3, 1 started).
both_pending() { [[ "$(shards2 | cut -d' ' -f1 | tr '\n' ' ')" == "m-a:pending:0/1 m-b:pending:0/1 " ]]; }
wait_for "both shards to be pending again" 10 both_pending
log "both shards are pending again after the job ended"

# A worker outside Slurm picks them up: their second attempts succeed, the campaign completes.
PATH="${runners_dir}:${PATH}" "${bin_dir}/evald-worker" --coordinator "${bind}" --name after-slurm \
  --slots 2 --gpus none --heartbeat-ms 100 --work-dir "${tmp}/after-slurm" \
  --curve-secret "${secrets}/workers/after-slurm.secret" \
  --coordinator-key "${secrets}/coordinator.public" 2>"${tmp}/log/after-slurm.log" &
pids+=($!)
wait_for "campaign ${campaign2} to succeed" 30 campaign_is "${campaign2}" succeeded
final="$(shards2 | tr '\n' ' ')"
[[ "${final}" == "m-a:succeeded:1/2 after-slurm m-b:succeeded:1/2 after-slurm " ]] ||
  fail "both shards should have succeeded on after-slurm at their 2nd attempt, got: ${final}"

# The audit log (admin only) names the token behind both submissions.
EVALD_TOKEN="$(token_of "${secrets}" auditor)" "${bin_dir}/evalctl" audit >"${tmp}/audit.txt" ||
  fail "evalctl audit failed: $(cat "${tmp}/audit.txt")"
audit="$(EVALD_TOKEN="$(token_of "${secrets}" auditor)" http_call GET "${EVALD_SERVER}/v1/audit")"
submitters="$(json "' '.join('%s:%s' % (e['principal'], e['campaign'])
                             for e in d['body']['events'] if e['action'] == 'submit')" <<<"${audit}")"
[[ "${submitters}" == "tester:${campaign1} tester:${campaign2}" ]] ||
  fail "expected both submissions by tester in the audit log, got: ${audit}"
[[ "$(evalctl status "${campaign1}" | json 'd["submitted_by"]')" == tester ]] ||
  fail "campaign ${campaign1} does not record its submitter: $(evalctl status "${campaign1}")"
log "PASS: campaign ${campaign1} ran on Slurm; after scancel, the shards the Slurm workers held" \
  "were re-queued and finished elsewhere"
