#!/usr/bin/env bash
# Runs the whole test suite, the way CI does (.ci/run runs exactly this):
#   1. build      scripts/setup.sh --packages-only installs what is missing; then
#                 scripts/test-sanitized.sh --build-only builds the test tree, build-sanitized/
#                 (gcc, ASan+UBSan, -O1; with CI=true compiler warnings are errors)
#   2. format     clang-format --dry-run -Werror on every tracked C++ file
#   3. fuzz       scripts/fuzz.sh: every libFuzzer target for EVALD_FUZZ_SECONDS (default 60)
#   4. tests      every unit, integration and deployment test through ctest in the test tree,
#                 under ASan+UBSan, last, so ctest's summary is the last thing printed and its
#                 exit code is ours
# It stops at the first stage that fails; each stage logs "test: stage=NAME result=ok seconds=N".
# The suite runs once, in the sanitized tree, which checks more than an optimised tree can; a
# second build and run of the same tests at -O2 cost CI about a third of its time. build/
# (scripts/setup.sh: the demo, the benchmarks) is not built here.
#
# Usage: scripts/test.sh [CTEST_ARG...]
#   With ctest arguments only stages 1 and 4 run, e.g. `scripts/test.sh -R '^unit:'` for the
#   unit tests: a targeted run while you work. Without arguments everything runs.
# Environment: EVALD_SANITIZED_BUILD_DIR, EVALD_JOBS, EVALD_WERROR (see
#   scripts/test-sanitized.sh); EVALD_SKIP_FORMAT=1, EVALD_SKIP_FUZZ=1 skip a gate;
#   EVALD_FUZZ_SECONDS sets the time per fuzz target (default 60; 20 when CI=true, where the
#   regression inputs and seed corpora are the gate and the 30-minute budget is tight). With
#   CI=true the fuzz targets are also built at -O0 (EVALD_FUZZ_OPT, see scripts/fuzz.sh): about
#   half the build time of -O1 for a slower fuzzer, which those 20 seconds do not need.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fuzz_seconds="${EVALD_FUZZ_SECONDS:-60}"
[[ -z "${EVALD_FUZZ_SECONDS:-}" && "${CI:-}" == "true" ]] && fuzz_seconds=20
[[ -z "${EVALD_FUZZ_OPT:-}" && "${CI:-}" == "true" ]] && export EVALD_FUZZ_OPT=O0

case "${1:-}" in
  -h | --help)
    sed -n '2,24p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
esac

stage() {
  local name="$1" skip="$2" start rc=0
  shift 2
  if [[ "${skip}" == "1" ]]; then
    printf 'test: stage=%s skipped\n' "${name}" >&2
    return 0
  fi
  printf 'test: stage=%s starting\n' "${name}" >&2
  start="${SECONDS}"
  "$@" || rc=$?
  printf 'test: stage=%s result=%s seconds=%d\n' "${name}" \
    "$([[ ${rc} == 0 ]] && echo ok || echo FAILED)" "$((SECONDS - start))" >&2
  return "${rc}"
}

check_format() {
  local files=() bad=()
  command -v clang-format >/dev/null || {
    printf 'test: clang-format not found (scripts/setup.sh installs clang-format)\n' >&2
    return 1
  }
  mapfile -t files < <(git -C "${repo_root}" ls-files -- '*.cpp' '*.hpp' '*.h' '*.cc')
  # One clang-format process for all files (one per file costs a minute on a busy machine); its
  # "FILE:LINE:COL: error:" lines name the files that need formatting.
  mapfile -t bad < <(cd "${repo_root}" && clang-format --dry-run -Werror "${files[@]}" 2>&1 |
    sed -n 's/^\([^:]*\):[0-9]*:[0-9]*: error: .*/\1/p' | sort -u)
  if ((${#bad[@]} > 0)); then
    printf 'test: these files are not clang-formatted (run clang-format -i on them):\n' >&2
    printf '  %s\n' "${bad[@]}" >&2
    return 1
  fi
  printf 'test: %d C++ files are clang-formatted\n' "${#files[@]}" >&2
}

build() {
  "${repo_root}/scripts/setup.sh" --packages-only
  "${repo_root}/scripts/test-sanitized.sh" --build-only
}

stage build 0 build
if (($# == 0)); then
  stage format "${EVALD_SKIP_FORMAT:-0}" check_format
  stage fuzz "${EVALD_SKIP_FUZZ:-0}" "${repo_root}/scripts/fuzz.sh" "${fuzz_seconds}"
fi
printf 'test: stage=tests starting\n' >&2
# exec: ctest's exit code becomes ours and nothing can print after its summary.
exec "${repo_root}/scripts/test-sanitized.sh" "$@"
