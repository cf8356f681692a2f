#!/usr/bin/env bash
# evald-slurm-scaler against a real Slurm (slurm_cluster.sh: munged, slurmctld and slurmd on
# loopback, one node "localhost" with 4 CPUs, so Slurm itself would run 4 one-task jobs) and a
# real coordinator, in the secure setup (CURVE keys for the workers, API tokens; the scaler
# reads /metrics with a reader token). It checks that
#   1. with nothing queued the scaler submits nothing;
#   2. when a campaign is queued it submits deploy/slurm worker jobs up to --max-nodes (3) and
#      never more (squeue is sampled every 0.2 s), the workers carry the pool's label and run
#      the campaign to completion with the exact expected scores;
#   3. once the work is done, every worker drains after --idle-exit-s and exits, every job ends
#      by itself (the scaler cancels nothing that runs), and no new job is submitted;
#   4. --once mode brings a node back for a later campaign; a coordinator it cannot reach, a
#      refused token, sbatch failing and a bad flag are clear errors (exit 1, 1, 1, 2).
# It prints the timeline (jobs submitted, started, drained, with times) at the end.
#
# Usage: run-slurm-scaler-test.sh BIN_DIR SOURCE_DIR
# Exit: 0 passed, 1 failed, 77 skipped (see slurm_cluster.sh). EVALD_SLURM_KEEP=1 keeps the temp
# dir.
set -euo pipefail

bin_dir="$(cd "${1:?usage: run-slurm-scaler-test.sh BIN_DIR SOURCE_DIR}" && pwd)"
source_dir="$(cd "${2:?usage: run-slurm-scaler-test.sh BIN_DIR SOURCE_DIR}" && pwd)"
sbatch_script="${source_dir}/deploy/slurm/evald-workers.sbatch"
runners_dir="${source_dir}/tests/integration/runners"
test_tag=slurm-scaler-test
# shellcheck source=tests/integration/script_lib.sh
source "${source_dir}/tests/integration/script_lib.sh"
# shellcheck source=tests/integration/slurm/slurm_cluster.sh
source "${source_dir}/tests/integration/slurm/slurm_cluster.sh"

for binary in evald-coordinator evald-worker evalctl evald-slurm-scaler; do
  [[ -x "${bin_dir}/${binary}" ]] || {
    echo "FAIL: ${bin_dir}/${binary} is not built"
    exit 1
  }
done

readonly max_nodes=3
readonly idle_exit_s=4
readonly job_name=evald-scaler-test
slurm_cluster_start 4

# --- keys, tokens, the coordinator ------------------------------------------------------------
# One key per worker the node may run at once (4: more than the scaler may start).
secrets="${tmp}/secrets"
make_secrets "${bin_dir}" "${source_dir}" --token tester:submitter --token scaler:reader \
  "${secrets}" localhost-0 localhost-1 localhost-2 localhost-3
key_dir="${tmp}/keys"
install -d -m 0700 "${key_dir}"
install -m 0644 "${secrets}/coordinator.public" "${key_dir}/"
install -m 0400 "${secrets}"/workers/localhost-*.secret "${key_dir}/"

"${bin_dir}/evald-coordinator" --data-dir "${tmp}/store" --bind tcp://127.0.0.1:0 \
  --http 127.0.0.1:0 --heartbeat-ms 100 --worker-timeout-ms 1000 --retry-backoff-ms 20 \
  --curve-secret "${secrets}/coordinator.secret" --worker-keys "${secrets}/worker-keys" \
  --api-tokens "${secrets}/api-tokens" \
  >"${tmp}/log/endpoints.json" 2>"${tmp}/log/coordinator.log" &
pids+=($!)
wait_for "the coordinator's endpoint line" 10 grep -q '"http"' "${tmp}/log/endpoints.json"
bind="$(json 'd["bind"]' <"${tmp}/log/endpoints.json")"
http="$(json 'd["http"]' <"${tmp}/log/endpoints.json")"
export EVALD_SERVER="http://${http}"
export EVALD_TOKEN
EVALD_TOKEN="$(token_of "${secrets}" tester)"
evalctl() { "${bin_dir}/evalctl" --json "$@"; }
log "coordinator: workers ${bind} (CURVE), API ${EVALD_SERVER} (tokens)"

# The environment of the worker jobs: sbatch's default --export=ALL hands the scaler's
# environment to them (the scaler adds EVALD_LABELS and EVALD_IDLE_EXIT_S).
scaler_env=(env -u EVALD_TOKEN "PATH=${runners_dir}:${PATH}" "EVALD_WORKER_BIN=${bin_dir}/evald-worker"
  EVALD_SLOTS=1 "EVALD_WORK_ROOT=${tmp}/jobs" EVALD_DRAIN_TIMEOUT_MS=1000 EVALD_HEARTBEAT_MS=100
  "EVALD_KEY_DIR=${key_dir}")
# The scaler with this cluster's settings; each run adds the rest. `env` execs it, so $! of a
# background run is the scaler itself.
scaler=("${scaler_env[@]}" "${bin_dir}/evald-slurm-scaler" --worker-endpoint "${bind}"
  --sbatch-script "${sbatch_script}" --labels pool=scaled --gpus-per-node 1
  --target-drain-s 10 --idle-exit-s "${idle_exit_s}" --sbatch-arg=--ntasks=1
  "--sbatch-arg=--output=${tmp}/log/job-%j.log")
scaler_log="${tmp}/log/scaler.log"
"${scaler[@]}" --coordinator "${EVALD_SERVER}" --token-file "${secrets}/tokens/scaler.token" \
  --max-nodes "${max_nodes}" --interval-s 1 --job-name "${job_name}" 2>"${scaler_log}" &
scaler_pid=$!
pids+=("${scaler_pid}")

# Our jobs in Slurm's queue, sampled every 0.2 s for the whole test: "EPOCH_S COUNT".
our_jobs() {
  squeue --noheader --name="${job_name}" --states=PENDING,CONFIGURING,RUNNING,COMPLETING \
    --format=%i 2>/dev/null | wc -l
}
(
  while true; do
    printf '%s %s\n' "$(date +%s.%N)" "$(our_jobs)"
    sleep 0.2
  done
) >"${tmp}/log/squeue-samples.txt" &
pids+=($!)

# --- 1. nothing queued, nothing submitted ------------------------------------------------------
decisions() { grep -c 'decision round=' "${scaler_log}" || true; }
three_rounds() { (($(decisions) >= 3)); }
wait_for "three scaler rounds" 20 three_rounds
first="$(grep -m 1 'decision round=' "${scaler_log}")"
[[ "${first}" == *"pending_gpu_s=0 source=all idle_workers=0 running_jobs=0 queued_jobs=0 wanted=0 submit=0"* ]] ||
  fail "the first round should want nothing: ${first}"
[[ "$(our_jobs)" == 0 ]] || fail "jobs submitted with nothing queued: $(squeue)"
if grep -q job_submitted "${scaler_log}"; then fail "a job was submitted with nothing queued"; fi
log "idle: $(decisions) rounds, no job submitted"

# --- 2. a campaign: jobs up to the limit, the campaign completes on them ----------------------
# 12 shards of 1.5 s each (evald-test-runner's sleep_ms). Until a shard finishes the coordinator
# expects a minute per shard: 720 GPU-s over 10 s per 1-GPU node wants 72 nodes, capped at 3.
cat >"${tmp}/campaign1.json" <<'SPEC'
{"name": "scaled-round1",
 "models": [{"name": "m-a", "params": {"mult": 1, "k": 4, "sleep_ms": 1500}},
            {"name": "m-b", "params": {"mult": 3, "k": 2, "sleep_ms": 1500}}],
 "benchmarks": [{"name": "b-x", "examples": 40, "shard_size": 10, "metric": "accuracy", "params": {"offset": 0}},
                {"name": "b-y", "examples": 20, "shard_size": 10, "metric": "accuracy", "params": {"offset": 5}}],
 "runner": {"type": "exec", "command": ["evald-test-runner", "{model}", "{benchmark}", "{shard}"], "timeout_s": 60},
 "max_attempts": 2}
SPEC
submitted_at="$(date -u +%H:%M:%S.%3N)"
campaign1="$(evalctl submit "${tmp}/campaign1.json" | json 'd["id"]')"
log "submitted campaign ${campaign1} (12 shards of 1.5 s)"
campaign_is() { [[ "$(evalctl status "$1" | json 'd["state"]')" == "$2" ]]; }
wait_for "campaign ${campaign1} to succeed" 90 campaign_is "${campaign1}" succeeded
succeeded_at="$(date -u +%H:%M:%S.%3N)"

submits="$(grep -c job_submitted "${scaler_log}" || true)"
[[ "${submits}" == "${max_nodes}" ]] ||
  fail "expected ${max_nodes} jobs submitted (the limit), got ${submits}: $(grep -E 'decision|job_' "${scaler_log}")"
evalctl shards "${campaign1}" | json "
'\n'.join('%s %s %d %s %d %s' % (s['model'], s['benchmark'], s['index'], s['state'], s['attempts'], s['worker'])
          for s in d['shards'])" >"${tmp}/shards1.txt"
[[ "$(wc -l <"${tmp}/shards1.txt")" == 12 ]] || fail "expected 12 shards: $(cat "${tmp}/shards1.txt")"
if grep -Ev " succeeded 1 localhost-[0-3]$" "${tmp}/shards1.txt"; then
  fail "the shards above did not succeed at their first attempt on a scaled worker"
fi
evalctl results "${campaign1}" >"${tmp}/results1.json"
check_scores "${tmp}/results1.json" '{"m-a": [1, 4], "m-b": [3, 2]}' '{"b-x": [40, 0], "b-y": [20, 5]}'
# Every worker carried the pool's label and the idle exit (the job log's first line says so).
evalctl workers | json "
'\n'.join('%s %s' % (w['name'], w['labels'].get('pool')) for w in d['workers'])" >"${tmp}/workers1.txt"
if grep -v " scaled$" "${tmp}/workers1.txt"; then fail "workers without the pool label pool=scaled"; fi
log "campaign ${campaign1} succeeded on $(cut -d' ' -f6 "${tmp}/shards1.txt" | sort | uniq -c | tr -s ' \n' ' ')"

# --- 3. idle workers drain and their jobs end --------------------------------------------------
no_jobs() { [[ "$(our_jobs)" == 0 ]]; }
wait_for "every scaled job to end after ${idle_exit_s} s idle" 60 no_jobs
drained_at="$(date -u +%H:%M:%S.%3N)"
mapfile -t job_list < <(grep -o 'job_submitted job=[0-9]*' "${scaler_log}" | cut -d= -f2)
for id in "${job_list[@]}"; do
  job_log="${tmp}/log/job-${id}.log"
  grep -q "idle_exit_s=${idle_exit_s}" "${job_log}" ||
    fail "job ${id} did not pass the idle exit to its worker: $(head -n 3 "${job_log}")"
  grep -q "drain_started reason=idle idle_s=${idle_exit_s} running=0 unacked=0" "${job_log}" ||
    fail "the worker of job ${id} did not leave by its idle exit: $(tail -n 20 "${job_log}")"
  grep -q "worker_stopped" "${job_log}" || fail "the worker of job ${id} did not stop cleanly"
  grep -q "goodbye sent=true" "${job_log}" || fail "the worker of job ${id} did not say goodbye"
done
# Scale-down is not a failure: each drained worker said GOODBYE and was retired, none was lost.
fleet_metric() {
  EVALD_TOKEN="$(token_of "${secrets}" scaler)" http_call GET "${EVALD_SERVER}/metrics" |
    json "int(sum(float(l.split()[-1]) for l in d['body'].splitlines() if l.startswith('$1 ')))"
}
all_left() { [[ "$(fleet_metric evald_workers_left_total)" == "${max_nodes}" ]]; }
wait_for "the coordinator to retire all ${max_nodes} workers that said goodbye" 10 all_left
lost="$(fleet_metric evald_worker_losses_total)"
[[ "${lost}" == 0 ]] || fail "scale-down counted ${lost} workers lost; they left"
ended_seen() { (($(grep -c job_ended "${scaler_log}" || true) >= max_nodes)); }
wait_for "the scaler to see every job end" 10 ended_seen
if grep -q job_cancelled "${scaler_log}"; then fail "the scaler cancelled a job: it must leave them to drain"; fi
# A few more rounds with nothing to do: nothing new is submitted.
rounds_now="$(decisions)"
more_rounds() { (($(decisions) >= rounds_now + 3)); }
wait_for "three more scaler rounds" 20 more_rounds
[[ "$(grep -c job_submitted "${scaler_log}")" == "${max_nodes}" ]] ||
  fail "a job was submitted after the work was done: $(grep -E 'decision|job_' "${scaler_log}" | tail)"
# Never more than the limit in Slurm's queue, and the limit was reached.
most="$(sort -k2 -n "${tmp}/log/squeue-samples.txt" | tail -n 1 | cut -d' ' -f2)"
[[ "${most}" == "${max_nodes}" ]] ||
  fail "expected at most and at least ${max_nodes} jobs at once, saw ${most} at most"
too_many="$(grep -o 'running_jobs=[0-9]* queued_jobs=[0-9]*' "${scaler_log}" |
  awk -F'[= ]' -v max="${max_nodes}" '$2 + $4 > max' | head -n 1)"
[[ -z "${too_many}" ]] || fail "the scaler counted more than ${max_nodes} jobs: ${too_many}"
log "all ${max_nodes} jobs drained and ended by themselves (${max_nodes} left, none lost); at most ${most} at once"

# --- 4. --once, and the errors -----------------------------------------------------------------
kill -TERM "${scaler_pid}"
wait "${scaler_pid}" || fail "the scaler did not exit 0 on SIGTERM"
grep -q scaler_stopped "${scaler_log}" || fail "the scaler did not log its stop"

cat >"${tmp}/campaign2.json" <<'SPEC'
{"name": "scaled-round2",
 "models": [{"name": "m-a", "params": {"mult": 1, "k": 4}}],
 "benchmarks": [{"name": "b-x", "examples": 10, "shard_size": 10, "metric": "accuracy", "params": {"offset": 0}}],
 "runner": {"type": "exec", "command": ["evald-test-runner", "{model}", "{benchmark}", "{shard}"], "timeout_s": 60},
 "max_attempts": 2}
SPEC
campaign2="$(evalctl submit "${tmp}/campaign2.json" | json 'd["id"]')"
# The coordinator refreshes its gauges every 250 ms: the scaler below must see this work, or it
# would rightly submit nothing and the sbatch failure would go untested. The pool's workers all
# left, but their kind stays in the gauges until they are forgotten, so the pool's own figure
# shows the work (the scaler would otherwise fall back to labels="all").
pool_pending() {
  EVALD_TOKEN="$(token_of "${secrets}" scaler)" http_call GET "${EVALD_SERVER}/metrics" | json "
d['status'] == 200 and any(line.startswith('evald_pending_gpu_seconds{labels=\"pool=scaled')
                           and float(line.split()[-1]) > 0 for line in d['body'].splitlines())" |
    grep -qx True
}
wait_for "campaign ${campaign2}'s work in the pool's evald_pending_gpu_seconds" 20 pool_pending
once_log="${tmp}/log/scaler-once.log"
# sbatch refuses the job (no such partition): exit 1, Slurm's reason in the log.
if "${scaler[@]}" --once --coordinator "${EVALD_SERVER}" --token-file "${secrets}/tokens/scaler.token" \
  --max-nodes 1 --job-name "${job_name}" --sbatch-arg=--partition=nosuch 2>"${once_log}"; then
  fail "the scaler succeeded although sbatch failed: $(cat "${once_log}")"
fi
grep -q 'sbatch_failed error="sbatch exited with 1: .*[Ii]nvalid partition' "${once_log}" ||
  fail "expected sbatch's error in the log: $(cat "${once_log}")"
# A coordinator it cannot reach.
if "${scaler[@]}" --once --coordinator "http://127.0.0.1:$(free_port)" --max-nodes 1 \
  --job-name "${job_name}" 2>"${once_log}"; then
  fail "the scaler succeeded without a coordinator"
fi
grep -q 'round_failed error="cannot reach http://127.0.0.1' "${once_log}" ||
  fail "expected 'cannot reach' in the log: $(cat "${once_log}")"
# A token the coordinator refuses.
printf 'not-a-token\n' >"${tmp}/bad.token"
if "${scaler[@]}" --once --coordinator "${EVALD_SERVER}" --token-file "${tmp}/bad.token" --max-nodes 1 \
  --job-name "${job_name}" 2>"${once_log}"; then
  fail "the scaler succeeded with a refused token"
fi
grep -q 'refused /metrics (HTTP 401)' "${once_log}" ||
  fail "expected the refused token in the log: $(cat "${once_log}")"
# A bad flag: usage error, exit 2.
set +e
"${scaler[@]}" --once --coordinator "${EVALD_SERVER}" --max-nodes 0 2>"${once_log}"
code=$?
set -e
{ [[ "${code}" == 2 ]] && grep -q -- '--max-nodes: must be between 1' "${once_log}"; } ||
  fail "expected exit 2 naming --max-nodes, got ${code}: $(cat "${once_log}")"
[[ "$(our_jobs)" == 0 ]] || fail "a failed round left a job behind: $(squeue)"

# One good round (as from cron): one node comes back for the new campaign, which completes on it.
"${scaler[@]}" --once --coordinator "${EVALD_SERVER}" --token-file "${secrets}/tokens/scaler.token" \
  --max-nodes 1 --job-name "${job_name}" 2>"${once_log}" ||
  fail "the --once round failed: $(cat "${once_log}")"
{ grep -q 'submit=1' "${once_log}" && grep -q 'job_submitted' "${once_log}"; } ||
  fail "expected one job submitted for campaign ${campaign2}: $(cat "${once_log}")"
wait_for "campaign ${campaign2} to succeed" 60 campaign_is "${campaign2}" succeeded
wait_for "the --once job to end after ${idle_exit_s} s idle" 60 no_jobs
log "--once: one node came back for ${campaign2}, ran it and left; error paths exit 1, 1, 1, 2"

# --- the timeline ------------------------------------------------------------------------------
log "timeline (UTC): campaign ${campaign1} submitted ${submitted_at}, succeeded ${succeeded_at}," \
  "all jobs gone by ${drained_at}"
grep -E 'job_submitted|job_state|job_ended' "${scaler_log}" |
  sed -E 's/^\[?([0-9T:.-]+)[^ ]* .*(job_[a-z]+ job=[0-9]+)( from=[A-Z]+ to=[A-Z]+| last_state=[A-Z]+)?.*/  \1 \2\3/'
for id in "${job_list[@]}"; do
  grep -hE 'worker_started|drain_started|worker_stopped' "${tmp}/log/job-${id}.log" |
    sed -E "s/^\[?([0-9T:.-]+)[^ ]* .*(worker_started|drain_started|worker_stopped).*/  \1 job=${id} \2/"
done
log "PASS: the scaler grew the pool to ${max_nodes} nodes for a queued campaign, never past" \
  "the limit, and the idle workers drained and ended their jobs by themselves"
