#!/usr/bin/env bash
# Runs ctest while stress-ng keeps the CPUs busy, the way a shared CI runner or a loaded
# developer machine does: a test that waits on real time must pass here too. Tests that fail only
# under load wait on a fixed delay somewhere instead of on the event they need.
#
# Usage: scripts/stress-test.sh [CTEST_ARG...]
#   The arguments go to ctest unchanged; without --test-dir the build dir is
#   $EVALD_BUILD_DIR (default <repo>/build). Examples:
#     scripts/stress-test.sh -R '^integration: ' --repeat until-fail:3
#     scripts/stress-test.sh -R 'graceful stop|nothing lost' --output-on-failure
# Environment:
#   EVALD_STRESS_CPUS  stress-ng CPU workers (default: the number of CPUs, i.e. all of them)
#   EVALD_STRESS_ARGS  other stress-ng arguments (default: none), e.g. "--io 1"
# Exit: ctest's exit code; 2 when stress-ng is missing (scripts/setup.sh installs it).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="${EVALD_BUILD_DIR:-${repo_root}/build}"

case "${1:-}" in
  -h | --help)
    sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
esac

command -v stress-ng >/dev/null || {
  echo "stress-test: stress-ng not found; scripts/setup.sh installs it" >&2
  exit 2
}
cpus="${EVALD_STRESS_CPUS:-$(nproc)}"
read -r -a extra <<<"${EVALD_STRESS_ARGS:-}"

ctest_args=("$@")
has_test_dir=false
for arg in "${ctest_args[@]}"; do
  [[ "${arg}" == --test-dir || "${arg}" == --test-dir=* ]] && has_test_dir=true
done
${has_test_dir} || ctest_args=(--test-dir "${build_dir}" "${ctest_args[@]}")

# Its own process group, so the cleanup stops stress-ng's workers and nothing else.
setsid stress-ng --cpu "${cpus}" "${extra[@]}" --timeout 0 --quiet &
stress_pid=$!
cleanup() {
  kill -TERM -- "-${stress_pid}" 2>/dev/null || true
  wait "${stress_pid}" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
echo "stress-test: stress-ng --cpu ${cpus} ${extra[*]} running (pid ${stress_pid}); ctest ${ctest_args[*]}" >&2
rc=0
ctest "${ctest_args[@]}" || rc=$?
exit "${rc}"
