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

# --- the secure setup -------------------------------------------------------------------------

# make_secrets BIN_DIR SOURCE_DIR DIR [--token NAME:ROLE]... WORKER_NAME...: the cluster's
# CURVE keys, allowlist and API tokens, made by the shipped deploy/make-secrets.sh with this
# build's `evalctl keygen`: DIR/coordinator.{secret,public}, DIR/workers/NAME.{secret,public},
# DIR/worker-keys, DIR/api-tokens and DIR/tokens/NAME.token.
make_secrets() {
  local bin="$1" src="$2" out
  shift 2
  out="$("${src}/deploy/make-secrets.sh" --evalctl "${bin}/evalctl" "$@" 2>&1)" ||
    fail "deploy/make-secrets.sh $* failed: ${out}"
}

# token_of DIR NAME: the token NAME made by make_secrets.
token_of() { tr -d '\n' <"$1/tokens/$2.token"; }

# check_secret_mode FILE: a secret key file as `evalctl keygen` must leave it, readable and
# writable by its owner only, whatever the umask.
check_secret_mode() {
  local mode
  mode="$(stat -c %a "$1")"
  [[ "${mode}" == 600 ]] || fail "$1 has mode ${mode}, expected 600"
}

# make_tls_cert DIR IP: a throwaway CA (DIR/ca.crt) and a server certificate for IP signed by it
# (DIR/server.crt, DIR/server.key), as an operator's CA would issue for the coordinator.
make_tls_cert() {
  local dir="$1" ip="$2"
  (
    umask 077
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
      -subj /CN=evald-test-ca -keyout "${dir}/ca.key" -out "${dir}/ca.crt" &&
      openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -subj "/CN=${ip}" -keyout "${dir}/server.key" -out "${dir}/server.csr" &&
      printf 'subjectAltName=IP:%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' \
        "${ip}" >"${dir}/server.ext" &&
      openssl x509 -req -in "${dir}/server.csr" -CA "${dir}/ca.crt" -CAkey "${dir}/ca.key" \
        -CAcreateserial -days 2 -extfile "${dir}/server.ext" -out "${dir}/server.crt"
  ) >"${dir}/openssl.log" 2>&1 || fail "openssl could not make a certificate: $(cat "${dir}/openssl.log")"
}

# http_call METHOD URL [BODY]: one API request as a script would make it, with
# `Authorization: Bearer $EVALD_TOKEN` when EVALD_TOKEN is set and the CA $EVALD_CACERT for
# https. Prints one JSON line {"status", "www_authenticate", "body"} (body parsed when JSON).
# The request is made through the command in the array http_via, if any (e.g. ip netns exec NS).
http_via=()
http_call() {
  "${http_via[@]}" python3 - "$@" <<'HTTP'
import json, os, ssl, sys, urllib.error, urllib.request
method, url = sys.argv[1], sys.argv[2]
body = sys.argv[3].encode() if len(sys.argv) > 3 else None
request = urllib.request.Request(url, data=body, method=method)
if os.environ.get("EVALD_TOKEN"):
    request.add_header("Authorization", "Bearer " + os.environ["EVALD_TOKEN"])
if body is not None:
    request.add_header("Content-Type", "application/json")
context = ssl.create_default_context(cafile=os.environ.get("EVALD_CACERT") or None)
try:
    response = urllib.request.urlopen(request, timeout=10, context=context)
except urllib.error.HTTPError as error:
    response = error
text = response.read().decode("utf-8", "replace")
try:
    parsed = json.loads(text)
except ValueError:
    parsed = text
print(json.dumps({"status": response.status, "www_authenticate": response.headers.get("WWW-Authenticate"),
                  "body": parsed}))
HTTP
}
