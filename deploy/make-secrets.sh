#!/usr/bin/env bash
# Makes the secrets of a new evald cluster in one directory, for the compose file and the
# Kubernetes manifests (which mount them from Secrets; see their READMEs and SECURITY.md):
#
#   DIR/coordinator.secret, DIR/coordinator.public   the coordinator's CURVE key pair
#   DIR/workers/NAME.secret, DIR/workers/NAME.public one key pair per worker NAME
#   DIR/worker-keys                                  the coordinator's allowlist: NAME PUBLIC_KEY
#   DIR/api-tokens                                   NAME ROLE SHA256 for one token per --token
#   DIR/tokens/NAME.token                            each token itself, to hand to its owner
#
# Usage: deploy/make-secrets.sh [OPTIONS] DIR WORKER_NAME...
#   --evalctl PATH     the evalctl that makes the keys (default: build/bin/evalctl, else PATH)
#   --token NAME:ROLE  a token to make (repeatable; role reader, submitter, operator or admin);
#                      default: one admin token named "admin"
#   --owner UID:GID    chown the files the daemons read (not the tokens) to the daemons' user,
#                      e.g. 10001:10001 for the compose file, which bind-mounts them as they are
# Everything is created with umask 077 (files 0600, directories 0700) in a DIR that must not
# exist yet, so that existing keys are never overwritten by accident: rotation is deliberate (see
# SECURITY.md). On hosts with systemd or Slurm, make each worker's key on its own host instead, so
# the secret never travels.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
evalctl=""
owner=""
tokens=()

die() {
  printf 'make-secrets: error: %s\n' "$*" >&2
  exit 2
}

while (($# > 0)); do
  case "$1" in
    --evalctl) evalctl="${2:?--evalctl needs a path}"; shift 2 ;;
    --token) tokens+=("${2:?--token needs NAME:ROLE}"); shift 2 ;;
    --owner) owner="${2:?--owner needs UID:GID}"; shift 2 ;;
    -h | --help) sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown option '$1' (see --help)" ;;
    *) break ;;
  esac
done
(($# >= 2)) || die "usage: make-secrets.sh [OPTIONS] DIR WORKER_NAME... (see --help)"
dir="$1"
shift
workers=("$@")
((${#tokens[@]} > 0)) || tokens=(admin:admin)

if [[ -z "${evalctl}" ]]; then
  if [[ -x "${repo_root}/build/bin/evalctl" ]]; then
    evalctl="${repo_root}/build/bin/evalctl"
  else
    evalctl="$(command -v evalctl || true)"
  fi
fi
[[ -n "${evalctl}" && -x "${evalctl}" ]] || die "evalctl not found; build it or pass --evalctl"
[[ -z "${owner}" || "${owner}" =~ ^[0-9]+:[0-9]+$ ]] || die "--owner ${owner}: expected UID:GID"
[[ -z "${owner}" || ${EUID} -eq 0 ]] || die "--owner needs root (run it with sudo)"
[[ ! -e "${dir}" ]] || die "${dir} exists; choose a new directory (existing keys are never overwritten)"

# A worker name is the --name it runs with and its key's name in the allowlist: one word.
name_ok() { [[ "$1" =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]]; }
declare -A seen=()
for name in "${workers[@]}"; do
  name_ok "${name}" || die "bad worker name '${name}': letters, digits, '.', '_' and '-' only"
  [[ -z "${seen[${name}]:-}" ]] || die "worker name '${name}' given twice"
  seen["${name}"]=1
done
for spec in "${tokens[@]}"; do
  [[ "${spec}" == *:* ]] || die "--token ${spec}: expected NAME:ROLE"
  name_ok "${spec%%:*}" || die "--token ${spec}: bad name"
  case "${spec#*:}" in
    reader | submitter | operator | admin) ;;
    *) die "--token ${spec}: role must be reader, submitter, operator or admin" ;;
  esac
done

umask 077
mkdir -p "${dir}/workers" "${dir}/tokens"

"${evalctl}" keygen "${dir}/coordinator" >/dev/null
{
  echo "# evald worker allowlist: NAME PUBLIC_KEY_Z85, one worker per line."
  for name in "${workers[@]}"; do
    "${evalctl}" keygen "${dir}/workers/${name}" >/dev/null
    printf '%s %s\n' "${name}" "$(tr -d '\n' <"${dir}/workers/${name}.public")"
  done
} >"${dir}/worker-keys"

# NAME ROLE SHA256_HEX per line, nothing else.
{
  for spec in "${tokens[@]}"; do
    name="${spec%%:*}"
    # 32 random bytes as hex: the token is a bearer secret, the file keeps only its hash.
    token="$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')"
    printf '%s\n' "${token}" >"${dir}/tokens/${name}.token"
    printf '%s %s %s\n' "${name}" "${spec#*:}" "$(printf %s "${token}" | sha256sum | cut -d' ' -f1)"
  done
} >"${dir}/api-tokens"

if [[ -n "${owner}" ]]; then
  chown "${owner}" "${dir}/coordinator.secret" "${dir}/coordinator.public" "${dir}/worker-keys" \
    "${dir}/api-tokens" "${dir}/workers/"*.secret
fi

printf 'make-secrets: wrote %s: coordinator key, %d worker keys (%s), %d tokens\n' \
  "${dir}" "${#workers[@]}" "${workers[*]}" "${#tokens[@]}" >&2
