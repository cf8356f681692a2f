#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz/) with clang in their own build directory and runs each
# for a bounded time, two at a time, over its seed corpus and its regression inputs. Every input
# in tests/fuzz/regressions/TARGET/ is replayed first, so a crash once found and committed keeps
# being checked. A crash (or leak, timeout, out-of-memory) writes the input to
# tests/fuzz/regressions/TARGET/ and fails the script, naming the target and the file; commit the
# file with the fix. New coverage found during a run goes to a scratch corpus that is thrown away.
#
# Usage: scripts/fuzz.sh [SECONDS]
#   SECONDS  fuzzing time per target (default: $EVALD_FUZZ_SECONDS, else 60); 0 only replays
#            the corpus and regressions, without fuzzing.
# Environment:
#   EVALD_FUZZ_SECONDS    default for SECONDS
#   EVALD_FUZZ_TARGETS    space-separated subset of targets to run (default: every bin/fuzz_*)
#   EVALD_FUZZ_BUILD_DIR  build directory (default: <repo>/build-fuzz)
#   EVALD_FUZZ_OPT        optimisation of a new build directory: O1 (default; fuzzes about as fast
#                         as O2) or O0 (builds in about half the time, fuzzes slower: what CI
#                         uses, where the seed corpora and regression inputs are the gate)
#   EVALD_JOBS            targets run at once, and build jobs (default: 2)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="${EVALD_FUZZ_BUILD_DIR:-${repo_root}/build-fuzz}"
opt="${EVALD_FUZZ_OPT:-O1}"
jobs="${EVALD_JOBS:-2}"
fuzz_dir="${repo_root}/tests/fuzz"

log() { printf 'fuzz: %s\n' "$*" >&2; }
die() {
  printf 'fuzz: error: %s\n' "$*" >&2
  exit 1
}

case "${1:-}" in
  -h | --help)
    sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
esac
seconds="${1:-${EVALD_FUZZ_SECONDS:-60}}"
[[ "${seconds}" =~ ^[0-9]+$ ]] || die "SECONDS must be a whole number, not '${seconds}'"

command -v clang++ >/dev/null || die "clang++ not found; run scripts/setup.sh (it installs clang)"

[[ "${opt}" == "O0" || "${opt}" == "O1" ]] || die "EVALD_FUZZ_OPT must be O0 or O1, not '${opt}'"
if [[ ! -f "${build_dir}/build.ninja" ]]; then
  launcher=()
  if command -v ccache >/dev/null; then launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi
  # -O1 -g1 (line tables): about as fast to fuzz as -O2, much faster to build, and crash stack
  # traces still name file and line. -O0 halves the build again (CI: scripts/test.sh).
  log "configuring ${build_dir} (clang, libFuzzer + ASan + UBSan, -${opt})"
  cmake -S "${repo_root}" -B "${build_dir}" -G Ninja -DCMAKE_BUILD_TYPE=Debug \
    -DCMAKE_CXX_FLAGS_DEBUG="-${opt} -g1" -DCMAKE_CXX_COMPILER=clang++ -DEVALD_FUZZ=ON \
    -DEVALD_BUILD_TESTS=OFF "${launcher[@]}" >&2
fi
log "building the fuzz targets (jobs=${jobs})"
cmake --build "${build_dir}" -j"${jobs}" --target evald_fuzzers >&2

targets=()
if [[ -n "${EVALD_FUZZ_TARGETS:-}" ]]; then
  read -r -a targets <<<"${EVALD_FUZZ_TARGETS}"
else
  for bin in "${build_dir}"/bin/fuzz_*; do
    [[ -x "${bin}" ]] && targets+=("${bin##*/fuzz_}")
  done
fi
((${#targets[@]} > 0)) || die "no fuzz targets in ${build_dir}/bin"

scratch="$(mktemp -d "${TMPDIR:-/tmp}/evald-fuzz.XXXXXX")"
trap 'rm -rf "${scratch}"' EXIT
mkdir -p "${scratch}/tmp"

# Each run leaves its log in the scratch dir; the verdict is read from it afterwards.
run_target() {
  local target="$1" bin="${build_dir}/bin/fuzz_$1"
  local corpus="${fuzz_dir}/corpus/${target}" regressions="${fuzz_dir}/regressions/${target}"
  local work="${scratch}/corpus-${target}"
  [[ -x "${bin}" ]] || {
    echo "no binary ${bin}" >"${scratch}/${target}.log"
    return 1
  }
  mkdir -p "${work}" "${regressions}" "${corpus}"
  local args=(-artifact_prefix="${regressions}/" -timeout=30 -rss_limit_mb=2048
    -print_final_stats=1 -close_fd_mask=1)
  if ((seconds > 0)); then
    args+=(-max_total_time="${seconds}" "${work}")
  else
    args+=(-runs=0)
  fi
  # The fuzzers' scratch files (outbox, RocksDB) go under ${scratch}, removed on exit even if a
  # crash skipped their own cleanup.
  TMPDIR="${scratch}/tmp" \
    ASAN_OPTIONS="halt_on_error=1:abort_on_error=0:detect_leaks=1" \
    UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1" \
    "${bin}" "${args[@]}" "${corpus}" "${regressions}" >"${scratch}/${target}.log" 2>&1
}

report() {
  local target="$1" rc="$2" logfile="${scratch}/$1.log" runs input
  runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "${logfile}" | tail -n 1)"
  if ((rc == 0)); then
    log "target=${target} result=ok seconds=${seconds} runs=${runs:-?}"
    return 0
  fi
  input="$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "${logfile}" | tail -n 1)"
  printf '%s\n' "----- fuzz_${target} log (last 60 lines) -----" >&2
  tail -n 60 "${logfile}" >&2
  log "FAIL target=${target} exit=${rc} input=${input:-none written}"
  [[ -n "${input}" ]] && log "replay: ${build_dir}/bin/fuzz_${target} ${input}"
  return 1
}

log "running ${#targets[@]} targets for ${seconds}s each, ${jobs} at a time: ${targets[*]}"
declare -A pid_target=()
failed=()
wait_one() {
  local pid rc=0
  wait -n -p pid || rc=$?
  report "${pid_target[${pid}]}" "${rc}" || failed+=("${pid_target[${pid}]}")
  unset "pid_target[${pid}]"
}
for target in "${targets[@]}"; do
  while ((${#pid_target[@]} >= jobs)); do wait_one; done
  run_target "${target}" &
  pid_target[$!]="${target}"
done
while ((${#pid_target[@]} > 0)); do wait_one; done

if ((${#failed[@]} > 0)); then
  die "${#failed[@]} target(s) failed: ${failed[*]} (inputs are in tests/fuzz/regressions/)"
fi
log "all ${#targets[@]} targets passed"
