#!/usr/bin/env bash
# Runs the unit and integration tests once more with AddressSanitizer and UndefinedBehaviorSanitizer
# (memory errors, leaks, UB such as signed overflow or a bad enum value), in a build directory of
# its own, so the normal build/ is untouched. Any sanitizer report fails the test that caused it:
# UB aborts (-fno-sanitize-recover=undefined) instead of printing and carrying on.
#
# What it leaves out, to fit CI's time budget, and why that loses no coverage of our code:
#   - the benchmarks (tests/bench), which ctest never runs (-DEVALD_BUILD_BENCHMARKS=OFF);
#   - the tests labelled "deploy" (Slurm, network namespaces): they check the deployment scripts
#     around the same binaries the integration tests already run, and need root.
# It builds with -O1 -g1 (line tables only): stack traces still name file and line, and it
# compiles much faster than the normal build's -O2 -g; the test programs' own code is built at -O0
# (EVALD_TESTS_O0), a third of the compile time of -O1 under the sanitizers. Warnings are not
# errors here: gcc warns falsely on some sanitizer-instrumented code, and the normal CI build
# already enforces -Werror.
#
# Usage: scripts/test-sanitized.sh [CTEST_ARG...]
#   Extra arguments go to ctest, e.g. `scripts/test-sanitized.sh -R '^unit:'`.
# Environment:
#   EVALD_SANITIZED_BUILD_DIR  build directory (default: <repo>/build-sanitized)
#   EVALD_JOBS                 build jobs and ctest -j (default: 2)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="${EVALD_SANITIZED_BUILD_DIR:-${repo_root}/build-sanitized}"
jobs="${EVALD_JOBS:-2}"

log() { printf 'test-sanitized: %s\n' "$*" >&2; }

case "${1:-}" in
  -h | --help)
    sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
esac

if [[ ! -f "${build_dir}/build.ninja" ]]; then
  launcher=()
  if command -v ccache >/dev/null; then launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi
  log "configuring ${build_dir} (ASan + UBSan, -O1)"
  cmake -S "${repo_root}" -B "${build_dir}" -G Ninja -DCMAKE_BUILD_TYPE=Debug \
    -DCMAKE_CXX_FLAGS_DEBUG="-O1 -g1" -DEVALD_SANITIZE=address,undefined \
    -DEVALD_BUILD_BENCHMARKS=OFF -DEVALD_TESTS_O0=ON "${launcher[@]}" >&2
fi
log "building (jobs=${jobs})"
cmake --build "${build_dir}" -j"${jobs}" >&2

# halt_on_error: the first report ends the process, so the test fails where the bug is.
# detect_leaks: a leak fails the process at exit. ZeroMQ and RocksDB are not instrumented; their
# own allocations are freed at their own shutdown, so they need no suppressions.
export ASAN_OPTIONS="${ASAN_OPTIONS:-halt_on_error=1:detect_leaks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}"
log "running the tests under ASan+UBSan (deploy-labelled tests excluded)"
# The sanitizers make every binary 2-3x slower, so a test that waits on a real clock gets one
# retry here (and only here); a sanitizer report halts the process and fails every try.
ctest --test-dir "${build_dir}" -j"${jobs}" --output-on-failure --timeout 900 -LE deploy \
  --repeat until-pass:2 "$@"
