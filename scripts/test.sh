#!/usr/bin/env bash
# Runs the whole test suite: installs what is missing and builds (scripts/setup.sh), then runs
# every unit and integration test through ctest. Exits with ctest's exit code, and ctest's
# summary is the last thing printed, so CI logs end with the verdict.
#
# Usage: scripts/test.sh [CTEST_ARG...]
#   Extra arguments go to ctest, e.g. `scripts/test.sh -R '^unit:'` for the unit tests only.
# Environment: EVALD_BUILD_DIR, EVALD_JOBS (see scripts/setup.sh).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="${EVALD_BUILD_DIR:-${repo_root}/build}"
jobs="${EVALD_JOBS:-2}"

case "${1:-}" in
  -h | --help)
    sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
esac

"${repo_root}/scripts/setup.sh"

# exec: ctest's exit code becomes ours and nothing can print after its summary.
exec ctest --test-dir "${build_dir}" -j"${jobs}" --output-on-failure --timeout 600 "$@"
