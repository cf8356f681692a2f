#!/usr/bin/env bash
# Builds the test tree and runs the tests in it: every unit, integration and deployment test,
# with AddressSanitizer and UndefinedBehaviorSanitizer (memory errors, leaks, UB such as signed
# overflow or a bad enum value), in build-sanitized/, so the normal build/ is untouched. This is
# the build CI tests (scripts/test.sh runs this script): one build that both gates warnings
# (-Werror when CI=true or EVALD_WERROR=ON) and runs the suite, instead of a Release build for the
# tests plus a sanitized build for the same tests again. Any sanitizer report fails the test that
# caused it: UB aborts (-fno-sanitize-recover=undefined) instead of printing and carrying on.
#
# It builds with -O1 -g1 (line tables only): stack traces still name file and line, and it
# compiles much faster than the normal build's -O2 -g; the test programs' own code is built at -O0
# (EVALD_TESTS_O0). The benchmarks (tests/bench) are left out (-DEVALD_BUILD_BENCHMARKS=OFF):
# ctest never runs them, and they measure only in the optimised build/.
#
# Usage: scripts/test-sanitized.sh [--build-only] [CTEST_ARG...]
#   --build-only  configure and build, run nothing
#   Extra arguments go to ctest, e.g. `scripts/test-sanitized.sh -R '^unit:'`.
# Environment:
#   EVALD_SANITIZED_BUILD_DIR  build directory (default: <repo>/build-sanitized)
#   EVALD_JOBS                 build jobs and ctest -j (default: 2)
#   EVALD_WERROR               ON/OFF: compiler warnings are errors (default: ON when CI=true);
#                              a change reconfigures the build dir
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="${EVALD_SANITIZED_BUILD_DIR:-${repo_root}/build-sanitized}"
jobs="${EVALD_JOBS:-2}"
werror="${EVALD_WERROR:-}"
if [[ -z "${werror}" && "${CI:-}" == "true" ]]; then werror=ON; fi

log() { printf 'test-sanitized: %s\n' "$*" >&2; }

build_only=0
case "${1:-}" in
  -h | --help)
    sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
  --build-only)
    build_only=1
    shift
    ;;
esac

if [[ ! -f "${build_dir}/build.ninja" ]]; then
  options=(-G Ninja -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="-O1 -g1"
    -DEVALD_SANITIZE=address,undefined -DEVALD_BUILD_BENCHMARKS=OFF -DEVALD_TESTS_O0=ON)
  [[ -n "${werror}" ]] && options+=(-DEVALD_WERROR="${werror}")
  if command -v ccache >/dev/null; then options+=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi
  log "configuring ${build_dir} (ASan + UBSan, -O1, warnings as errors: ${werror:-OFF})"
  cmake -S "${repo_root}" -B "${build_dir}" "${options[@]}" >&2
elif [[ -n "${werror}" ]] && ! grep -qx "EVALD_WERROR:BOOL=${werror}" "${build_dir}/CMakeCache.txt"; then
  log "reconfiguring ${build_dir} with EVALD_WERROR=${werror}"
  cmake -S "${repo_root}" -B "${build_dir}" -DEVALD_WERROR="${werror}" >&2
fi
log "building (jobs=${jobs})"
cmake --build "${build_dir}" -j"${jobs}" >&2
((build_only)) && exit 0

# halt_on_error: the first report ends the process, so the test fails where the bug is.
# detect_leaks: a leak fails the process at exit. ZeroMQ and RocksDB are not instrumented; their
# own allocations are freed at their own shutdown, so they need no suppressions.
export ASAN_OPTIONS="${ASAN_OPTIONS:-halt_on_error=1:detect_leaks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}"
log "running the tests under ASan+UBSan"
# The sanitizers make every binary 2-3x slower, so a test that waits on a real clock gets one
# retry; a sanitizer report halts the process and fails every try. exec: ctest's exit code is
# ours, and its summary is the last thing printed.
exec ctest --test-dir "${build_dir}" -j"${jobs}" --output-on-failure --timeout 900 \
  --repeat until-pass:2 "$@"
