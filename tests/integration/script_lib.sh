# Helpers for the integration tests that are bash scripts (slurm/, netns/). Source it after
# setting `test_tag` (it prefixes log lines). Exit codes: 0 passed, 1 failed, 77 skipped.
# shellcheck shell=bash

readonly kSkip=77

log() { printf '[%s %(%H:%M:%S)T] %s\n' "${test_tag}" -1 "$*"; }
skip() {
  printf 'SKIP: %s\n' "$*"
  exit "${kSkip}"
}
fail() {
  printf 'FAIL: %s\n' "$*"
  exit 1
}

# wait_for DESCRIPTION TIMEOUT_S COMMAND...: polls COMMAND every 0.1 s until it succeeds.
wait_for() {
  local what="$1" timeout_s="$2"
  shift 2
  local deadline=$((SECONDS + timeout_s))
  until "$@"; do
    ((SECONDS < deadline)) || fail "timed out after ${timeout_s}s waiting for ${what}"
    sleep 0.1
  done
}

# json EXPR: evaluates a Python expression (it may span lines) over the JSON document on stdin,
# bound to `d`.
json() {
  python3 -c 'import json, sys; d = json.load(sys.stdin); print(eval("(" + sys.argv[1] + ")"))' "$1"
}

# check_scores RESULTS_FILE MODELS BENCHMARKS: every cell of a leaderboard (`evalctl --json
# results`) holds the exact example-weighted score of evald-test-runner's formula (example i of a
# model is correct iff (i * mult + offset) % 7 < k) over all of the benchmark's examples.
# MODELS is JSON {"name": [mult, k]}, BENCHMARKS is JSON {"name": [examples, offset]}.
check_scores() {
  python3 - "$@" <<'CHECK' || fail "wrong leaderboard: $(cat "$1")"
import json, sys
results = json.load(open(sys.argv[1]))
models = json.loads(sys.argv[2])
benchmarks = json.loads(sys.argv[3])
for row in results["models"]:
    mult, k = models[row["name"]]
    for name, (examples, offset) in benchmarks.items():
        want = sum(1 for i in range(examples) if (i * mult + offset) % 7 < k) / examples
        score = row["scores"][name]
        assert abs(score["value"] - want) < 1e-12, (row["name"], name, score, want)
        assert score["count"] == examples and score["complete"], (row["name"], name, score)
CHECK
}
