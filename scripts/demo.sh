#!/usr/bin/env bash
# The evald demo on this machine: builds evald (scripts/setup.sh), starts a coordinator and two
# workers on 127.0.0.1, submits configs/campaigns/demo.json (3 served models x 4 bundled
# benchmarks: the workers start each model's server, a small deterministic OpenAI-compatible
# one, and the built-in openai runner asks it), watches it, prints the leaderboard and how often
# each model was loaded, and stops everything again. Exits 0 only if every shard succeeded.
#
# Usage: scripts/demo.sh [CAMPAIGN_FILE]
# CAMPAIGN_FILE defaults to configs/campaigns/demo.json; configs/campaigns/demo-exec.json is the
# same idea with an exec runner (examples/demo/evald-demo-score) instead of served models.
# Everything the demo writes (RocksDB store, worker scratch dirs, logs) goes to ./demo-data/,
# which is wiped at the start of each run. Environment: EVALD_BUILD_DIR, EVALD_JOBS (see
# scripts/setup.sh), EVALD_DEMO_TIMEOUT_S (how long to watch the campaign; default 300).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="${EVALD_BUILD_DIR:-${repo_root}/build}"
bin_dir="${build_dir}/bin"
demo_dir="${repo_root}/demo-data"
logs_dir="${demo_dir}/logs"
campaign_file="${repo_root}/configs/campaigns/demo.json"
# The demo specs name their data files relative to the repository (examples/demo/data/...), and
# workers read a relative path from their working directory: everything runs from the root.
cd "${repo_root}"
watch_timeout_s="${EVALD_DEMO_TIMEOUT_S:-300}"
startup_timeout_s=30
stop_timeout_s=40  # > the worker's default drain time for running shards

case "${1:-}" in
  -h | --help)
    sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
  "") ;;
  -*)
    printf 'demo: unknown option %q (try --help)\n' "$1" >&2
    exit 2
    ;;
  *)
    ((${#@} == 1)) || {
      printf 'demo: one campaign file at most (try --help)\n' >&2
      exit 2
    }
    # Relative to where the user ran us, not to the repository root we moved to.
    case "$1" in
      /*) campaign_file="$1" ;;
      *) campaign_file="${OLDPWD}/$1" ;;
    esac
    [[ -f "${campaign_file}" ]] || {
      printf 'demo: no such campaign file: %s\n' "$1" >&2
      exit 2
    }
    ;;
esac

if [[ -t 1 ]]; then
  bold=$'\e[1m' reset=$'\e[0m'
else
  bold='' reset=''
fi
heading() { printf '\n%s==> %s%s\n' "${bold}" "$*" "${reset}"; }
note() { printf '    %s\n' "$*"; }
fail() {
  printf 'demo: error: %s\n' "$*" >&2
  exit 1
}

# --- process bookkeeping: whatever we start is stopped on every exit path -----------------------

pids=()
names=()
watch_pid=''

is_running() {
  # A child that exited but was not reaped yet is a zombie: kill -0 still succeeds on it.
  kill -0 "$1" 2>/dev/null && [[ "$(ps -o stat= -p "$1" 2>/dev/null || true)" != Z* ]]
}

stop_group() {
  # stop_group INDEX...: SIGTERM to those processes, then wait for them (SIGKILL at the deadline).
  local i pid code deadline signalled=()
  for i in "$@"; do
    signalled[i]=0
    if is_running "${pids[i]}" && kill -TERM "${pids[i]}" 2>/dev/null; then signalled[i]=1; fi
  done
  deadline=$((SECONDS + stop_timeout_s))
  for i in "$@"; do
    pid="${pids[i]}"
    while is_running "${pid}" && ((SECONDS < deadline)); do sleep 0.1; done
    if is_running "${pid}"; then
      printf 'demo: %s (pid %s) did not stop within %ss of SIGTERM; killing it\n' \
        "${names[i]}" "${pid}" "${stop_timeout_s}" >&2
      kill -KILL "${pid}" 2>/dev/null || true
    fi
    code=0
    wait "${pid}" 2>/dev/null || code=$?
    # Every evald daemon stops gracefully on SIGTERM; say so when one did not.
    if ((signalled[i] && code != 0)); then
      printf 'demo: warning: %s exited with code %s after SIGTERM (see its log in %s)\n' \
        "${names[i]}" "${code}" "${logs_dir}" >&2
    fi
  done
}

stop_all() {
  ((${#pids[@]} > 0)) || return 0
  # The workers (started after the coordinator) stop first, while the coordinator still listens
  # for their last results; then the coordinator.
  local i workers=()
  for ((i = 1; i < ${#pids[@]}; i++)); do workers+=("${i}"); done
  if ((${#workers[@]} > 0)); then stop_group "${workers[@]}"; fi
  stop_group 0
  pids=()
  names=()
}

# shellcheck disable=SC2317  # only reached through the EXIT trap, which shellcheck cannot see
on_exit() {
  local code=$?
  trap - EXIT INT TERM
  if [[ -n "${watch_pid}" ]]; then
    kill -TERM "${watch_pid}" 2>/dev/null || true
    wait "${watch_pid}" 2>/dev/null || true
  fi
  if ((${#pids[@]} > 0)); then
    heading "Stopping the workers and the coordinator (SIGTERM)"
    stop_all
  fi
  exit "${code}"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start() {
  # start NAME STDOUT_FILE STDERR_FILE COMMAND...: runs COMMAND in the background.
  local name="$1" out_file="$2" err_file="$3"
  shift 3
  "$@" >"${out_file}" 2>"${err_file}" &
  pids+=("$!")
  names+=("${name}")
}

show_log_tail() {
  printf -- '--- last lines of %s ---\n' "$1" >&2
  tail -n 40 "$1" >&2 || true
  printf -- '---\n' >&2
}

# --- 1. build ------------------------------------------------------------------------------------

heading "Building evald (scripts/setup.sh: installs missing packages, builds incrementally)"
"${repo_root}/scripts/setup.sh"
for binary in evald-coordinator evald-worker evalctl; do
  [[ -x "${bin_dir}/${binary}" ]] || fail "${bin_dir}/${binary} was not built"
done
evalctl() { "${bin_dir}/evalctl" "$@"; }

# --- 2. fresh data dir ---------------------------------------------------------------------------

heading "Preparing a fresh data dir: ${demo_dir}"
rm -rf -- "${demo_dir}"
mkdir -p "${logs_dir}" "${demo_dir}/worker-1" "${demo_dir}/worker-2"
note "store: demo-data/store   logs: demo-data/logs/   worker scratch: demo-data/worker-{1,2}"

# --- 3. coordinator ------------------------------------------------------------------------------

heading "Starting the coordinator (ports picked by the OS, 127.0.0.1 only)"
endpoints_file="${logs_dir}/coordinator.endpoints"
: >"${endpoints_file}"
start coordinator "${endpoints_file}" "${logs_dir}/coordinator.log" \
  "${bin_dir}/evald-coordinator" --data-dir "${demo_dir}/store" \
  --bind tcp://127.0.0.1:0 --http 127.0.0.1:0 --log-level info
coordinator_pid="${pids[0]}"

# Once it is serving, the coordinator prints one JSON line with the endpoints it bound.
deadline=$((SECONDS + startup_timeout_s))
endpoint_line=''
while [[ -z "${endpoint_line}" ]]; do
  if ! is_running "${coordinator_pid}"; then
    show_log_tail "${logs_dir}/coordinator.log"
    fail "the coordinator exited before it was serving (log: ${logs_dir}/coordinator.log)"
  fi
  if ((SECONDS >= deadline)); then
    show_log_tail "${logs_dir}/coordinator.log"
    fail "the coordinator did not print its endpoints within ${startup_timeout_s}s"
  fi
  endpoint_line="$(head -n 1 "${endpoints_file}" 2>/dev/null || true)"
  # Only a complete line counts; the write may still be under way.
  [[ "${endpoint_line}" == *"}" ]] || {
    endpoint_line=''
    sleep 0.1
  }
done
read -r zmq_endpoint http_endpoint < <(python3 -c '
import json, sys
endpoints = json.loads(sys.argv[1])
print(endpoints["bind"], endpoints["http"])' "${endpoint_line}") ||
  fail "cannot parse the coordinator's endpoint line: ${endpoint_line}"
export EVALD_SERVER="http://${http_endpoint}"
note "workers connect to ${zmq_endpoint}"
note "HTTP API and /metrics: ${EVALD_SERVER}  (evalctl finds it through \$EVALD_SERVER)"

# --- 4. workers ----------------------------------------------------------------------------------

heading "Starting two workers (2 slots each, no GPUs)"
# Workers resolve the model servers' and runners' commands through PATH:
# examples/demo/evald-demo-model-server (the served models) and evald-demo-score (demo-exec.json).
worker_path="${repo_root}/examples/demo:${PATH}"
for n in 1 2; do
  start "demo-worker-${n}" "${logs_dir}/worker-${n}.out" "${logs_dir}/worker-${n}.log" \
    env PATH="${worker_path}" "${bin_dir}/evald-worker" --coordinator "${zmq_endpoint}" \
    --name "demo-worker-${n}" --slots 2 --gpus none --labels pool=demo \
    --work-dir "${demo_dir}/worker-${n}"
  note "demo-worker-${n}: log demo-data/logs/worker-${n}.log"
done

# Not required (shards wait in the queue until a worker asks), but it makes the demo show both
# workers sharing the load from the start.
count_workers() {
  python3 - "${EVALD_SERVER}/v1/workers" <<'EOF' 2>/dev/null || echo 0
import json, sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=2) as reply:
    workers = json.load(reply).get("workers", [])
print(sum(1 for w in workers if str(w.get("name", "")).startswith("demo-worker-")))
EOF
}
deadline=$((SECONDS + startup_timeout_s))
while (($(count_workers) < 2)); do
  for i in 1 2; do
    is_running "${pids[i]}" || {
      show_log_tail "${logs_dir}/worker-${i}.log"
      fail "demo-worker-${i} exited (log: ${logs_dir}/worker-${i}.log)"
    }
  done
  if ((SECONDS >= deadline)); then
    note "the workers have not both registered after ${startup_timeout_s}s; going on anyway"
    break
  fi
  sleep 0.2
done

# --- 5. the campaign -----------------------------------------------------------------------------

campaign_shape="$(python3 -c '
import json, sys
with open(sys.argv[1], encoding="utf-8") as f:
    spec = json.load(f)
served = sum(1 for m in spec.get("models", []) if "serve" in m)
print("%d models x %d benchmarks, %s runner%s" % (
    len(spec.get("models", [])), len(spec.get("benchmarks", [])),
    spec.get("runner", {}).get("type", "?"),
    ", %d served models" % served if served else ""))' "${campaign_file}")" ||
  fail "cannot read ${campaign_file}"
heading "Submitting ${campaign_file#"${repo_root}/"}: ${campaign_shape}"
campaign_id="$(evalctl submit "${campaign_file}")" || fail "evalctl submit failed"
campaign_id="${campaign_id//[[:space:]]/}"
note "campaign id: ${campaign_id}"

heading "Watching the campaign (evalctl watch ${campaign_id})"
# In the background and then `wait`: bash runs a trap only once the foreground command has
# finished, but it interrupts `wait` at once, so Ctrl-C or SIGTERM stops the demo right away.
timeout "${watch_timeout_s}" "${bin_dir}/evalctl" watch "${campaign_id}" &
watch_pid=$!
watch_code=0
wait "${watch_pid}" || watch_code=$?
watch_pid=''
if ((watch_code == 124)); then
  note "the campaign did not finish within ${watch_timeout_s}s"
fi

heading "Leaderboard (evalctl results ${campaign_id})"
evalctl results "${campaign_id}" || true

heading "The same leaderboard as Markdown (evalctl results ${campaign_id} --format markdown)"
evalctl results "${campaign_id}" --format markdown || true

# Each worker keeps a model's server warm between that model's shards, and the coordinator sends a
# model's shards to where it is warm, so a model is loaded at most once per worker that ran it.
heading "Model loads (model_loads of GET /v1/campaigns/${campaign_id})"
python3 - "${EVALD_SERVER}/v1/campaigns/${campaign_id}" <<'EOF' || true
import json, sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=5) as reply:
    campaign = json.load(reply)
loads = campaign.get("model_loads") or {}
if not loads:
    print("    no model servers were loaded (this campaign's models are not served)")
for model, count in sorted(loads.items()):
    print("    %-12s loaded %d time%s" % (model, count, "" if count == 1 else "s"))
if loads:
    print("    total %d loads for %d models on 2 workers (at most one per model and worker)"
          % (sum(loads.values()), len(loads)))
EOF

heading "Workers (evalctl workers)"
evalctl workers || true

if ((watch_code != 0)); then
  heading "Shards that did not succeed (evalctl shards ${campaign_id} --state failed)"
  evalctl shards "${campaign_id}" --state failed || true
fi

# Stop now rather than in the EXIT trap so the summary below is the last thing printed.
heading "Stopping the workers and the coordinator (SIGTERM)"
stop_all

heading "Summary"
note "logs: ${logs_dir}/ (coordinator.log, worker-1.log, worker-2.log)"
if ((watch_code == 0)); then
  note "campaign ${campaign_id} succeeded: every shard was scored"
  exit 0
fi
note "campaign ${campaign_id} did NOT succeed (evalctl watch exited ${watch_code})"
exit 1
