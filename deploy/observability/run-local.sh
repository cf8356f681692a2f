#!/usr/bin/env bash
# Starts Prometheus (the Debian package's /usr/bin/prometheus) with evald's shipped scrape config
# and alert rules (deploy/prometheus/) against a cluster running on this machine, and keeps it in
# the foreground until Ctrl-C. The shipped config takes its targets from files; this script
# writes them from the addresses given here, so nothing under deploy/ is changed.
#
# Usage: deploy/observability/run-local.sh [options]
#   --coordinator HOST:PORT  the coordinator's --http address (default 127.0.0.1:8080)
#   --worker HOST:PORT       a worker's --metrics address; repeat for each worker
#   --listen HOST:PORT       Prometheus's own address (default 127.0.0.1:9090)
#   --dir DIR                config copy, targets and TSDB (default $TMPDIR/evald-observability)
# Then open http://127.0.0.1:9090 (Status > Targets, Alerts), or start Grafana with
# deploy/observability/compose.yaml (see README.md, "Prometheus and Grafana").
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
coordinator="127.0.0.1:8080"
workers=()
listen="127.0.0.1:9090"
dir="${TMPDIR:-/tmp}/evald-observability"

die() {
  printf 'run-local: error: %s\n' "$*" >&2
  exit 2
}

while (($# > 0)); do
  case "$1" in
    --coordinator) coordinator="${2:?--coordinator needs HOST:PORT}"; shift 2 ;;
    --worker) workers+=("${2:?--worker needs HOST:PORT}"); shift 2 ;;
    --listen) listen="${2:?--listen needs HOST:PORT}"; shift 2 ;;
    --dir) dir="${2:?--dir needs a directory}"; shift 2 ;;
    -h | --help) sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

prometheus="$(command -v prometheus || true)"
[[ -n "${prometheus}" ]] ||
  die "prometheus is not installed; sudo apt-get install --no-install-recommends prometheus"

# HOST:PORT with nothing that needs quoting in JSON or YAML ([::1]:9101 is fine).
host_port='^[][A-Za-z0-9.:_-]+:[0-9]+$'
for target in "${coordinator}" ${workers[@]+"${workers[@]}"} "${listen}"; do
  [[ "${target}" =~ ${host_port} ]] || die "'${target}' is not HOST:PORT"
done

# A JSON array of quoted targets, e.g. ["127.0.0.1:9101","127.0.0.1:9102"].
json_targets() {
  local out="" target
  for target in "$@"; do
    out+="${out:+,}\"${target}\""
  done
  printf '[%s]' "${out}"
}

mkdir -p "${dir}/targets" "${dir}/data"
cp "${repo_root}/deploy/prometheus/prometheus.yml" "${repo_root}/deploy/prometheus/alerts.yml" \
  "${dir}/"
rm -f "${dir}"/targets/*.json
printf '[{"targets": %s, "labels": {"site": "local"}}]\n' "$(json_targets "${coordinator}")" \
  >"${dir}/targets/coordinator.json"
printf '[{"targets": %s, "labels": {"site": "local"}}]\n' \
  "$(json_targets ${workers[@]+"${workers[@]}"})" >"${dir}/targets/workers.json"

if command -v promtool >/dev/null; then
  promtool check config "${dir}/prometheus.yml" >/dev/null || die "the config does not check"
fi
printf 'run-local: Prometheus on http://%s scraping coordinator %s and %d worker(s); data in %s\n' \
  "${listen}" "${coordinator}" "${#workers[@]}" "${dir}" >&2
exec "${prometheus}" --config.file="${dir}/prometheus.yml" \
  --storage.tsdb.path="${dir}/data" --web.listen-address="${listen}"
