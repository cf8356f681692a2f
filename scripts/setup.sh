#!/usr/bin/env bash
# Installs what evald needs to build (only the Debian packages that are missing), configures
# build/ once and builds incrementally. Safe to run again and again: a second run installs
# nothing, does not reconfigure, and rebuilds only what changed.
#
# Usage: scripts/setup.sh [--packages-only | TARGET...]
#   TARGET           extra CMake targets to build besides the default ones (e.g. benchmarks).
#   --packages-only  install the missing packages and stop (scripts/test.sh builds its own tree).
# Environment:
#   EVALD_BUILD_DIR  build directory (default: <repo>/build)
#   EVALD_JOBS       parallel build jobs (default: 2, the size of the development machine)
#   EVALD_WERROR     ON/OFF: compiler warnings are errors (default: ON when CI=true, else left
#                    as configured, which starts OFF); a change reconfigures the build dir
#   EVALD_BUILD_TYPE CMake build type of a new build dir (default: RelWithDebInfo; Release when
#                    CI=true: CI never reads the debug info, which costs a third of the compile time)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="${EVALD_BUILD_DIR:-${repo_root}/build}"
jobs="${EVALD_JOBS:-2}"
# CI builds with warnings as errors so a new warning fails the change that adds it; on a
# developer's machine a newer compiler's new warning should not stop the build.
werror="${EVALD_WERROR:-}"
build_type="${EVALD_BUILD_TYPE:-}"
if [[ -z "${build_type}" ]]; then
  build_type=RelWithDebInfo
  [[ "${CI:-}" == "true" ]] && build_type=Release
fi
if [[ -z "${werror}" && "${CI:-}" == "true" ]]; then werror=ON; fi

packages=(
  build-essential cmake ninja-build pkg-config
  libzmq3-dev cppzmq-dev
  libboost-dev libboost-program-options-dev libboost-filesystem-dev
  librocksdb-dev nlohmann-json3-dev prometheus-cpp-dev catch2 libspdlog-dev
  python3 procps
  # security: OpenSSL for the HTTPS API; clang with libFuzzer and the sanitizer runtimes for the
  # fuzz targets and the ASan+UBSan test run
  libssl-dev clang libfuzzer-14-dev libclang-rt-14-dev
  # CI's format gate (scripts/test.sh): the clang-format of the repo's .clang-format (14 on bookworm)
  clang-format
  # the HTTPS tests make a throwaway CA, server and client certificates with the openssl CLI
  openssl
  # observability tests: a real Prometheus server and promtool (on a host with systemd the
  # package also enables a prometheus service on :9090; the tests start their own on a free port)
  prometheus
  # deployment tests: systemd-analyze, PyYAML, a real Slurm with munge, network namespaces
  systemd python3-yaml slurm-wlm munge iproute2
  # independence-check tests: numpy writes the synthetic safetensors checkpoints
  python3-numpy
  # served models: campaign specs written in YAML are read with yaml-cpp
  libyaml-cpp-dev
  # scripts/stress-test.sh: the test suite with every CPU kept busy, to find timing assumptions
  stress-ng
  # statistics tests: SciPy is the independent computation the stderr, McNemar, t-test and Holm
  # values are checked against; headless Chromium renders `evalctl report` in a test
  python3-scipy chromium
)

log() { printf 'setup: %s\n' "$*" >&2; }
die() {
  printf 'setup: error: %s\n' "$*" >&2
  exit 1
}

packages_only=0
case "${1:-}" in
  -h | --help)
    sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
  --packages-only)
    packages_only=1
    shift
    ;;
esac

is_installed() {
  [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" == "install ok installed" ]]
}

install_missing_packages() {
  command -v dpkg-query >/dev/null || die "this script needs a Debian/Ubuntu system (no dpkg-query)"
  local missing=() pkg
  for pkg in "${packages[@]}"; do
    is_installed "${pkg}" || missing+=("${pkg}")
  done
  if ((${#missing[@]} == 0)); then
    log "all ${#packages[@]} required packages are installed"
    return
  fi
  local sudo=()
  if ((EUID != 0)); then
    command -v sudo >/dev/null ||
      die "missing packages (${missing[*]}) and not root and no sudo; install them as root"
    sudo=(sudo)
  fi
  log "installing missing packages: ${missing[*]}"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends "${missing[@]}"
}

configure() {
  if [[ ! -f "${build_dir}/CMakeCache.txt" ]]; then
    log "configuring ${build_dir} (Ninja, ${build_type})"
    local options=(-G Ninja -DCMAKE_BUILD_TYPE="${build_type}")
    [[ -n "${werror}" ]] && options+=(-DEVALD_WERROR="${werror}")
    # ccache (not required, not installed here) makes a rebuild after a branch switch cheap.
    command -v ccache >/dev/null && options+=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
    cmake -S "${repo_root}" -B "${build_dir}" "${options[@]}"
  elif [[ ! -f "${build_dir}/build.ninja" && ! -f "${build_dir}/Makefile" ]]; then
    # A configure step that was interrupted leaves a cache but no build files; finish it with
    # the generator recorded in the cache instead of forcing a new one.
    log "finishing the interrupted configure of ${build_dir}"
    cmake -S "${repo_root}" -B "${build_dir}"
  elif [[ -n "${werror}" ]] &&
    ! grep -qx "EVALD_WERROR:BOOL=${werror}" "${build_dir}/CMakeCache.txt"; then
    log "reconfiguring ${build_dir} with EVALD_WERROR=${werror}"
    cmake -S "${repo_root}" -B "${build_dir}" -DEVALD_WERROR="${werror}"
  else
    log "${build_dir} is already configured"
  fi
}

build() {
  local targets=("$@")
  if ((${#targets[@]} > 0)); then
    log "building (jobs=${jobs}) default targets and: ${targets[*]}"
    cmake --build "${build_dir}" -j"${jobs}" --target all "${targets[@]}"
  else
    log "building (jobs=${jobs})"
    cmake --build "${build_dir}" -j"${jobs}"
  fi
}

install_missing_packages
((packages_only)) && exit 0
configure
build "$@"
log "done; binaries are in ${build_dir}/bin"
