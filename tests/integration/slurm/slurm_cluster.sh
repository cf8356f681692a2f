# A private Slurm cluster on loopback for the Slurm tests (run-slurm-test.sh,
# run-slurm-scaler-test.sh): munged, slurmctld and slurmd from Debian's slurm-wlm, configured in a
# temp dir with one node "localhost". Source it after tests/integration/script_lib.sh, then call
#   slurm_cluster_start CPUS
# which skips (exit 77) where this machine cannot run Slurm, and otherwise leaves:
#   tmp         the temp dir (log/ holds every daemon's log, dumped on failure)
#   SLURM_CONF  exported, so sbatch, squeue and scancel talk to this cluster only
#   pids        processes killed in reverse order on exit; a test appends its own
# On exit (also on failure) every job of the cluster is cancelled, then the processes and the
# daemons are stopped and the temp dir is removed (EVALD_SLURM_KEEP=1 keeps it).
# shellcheck shell=bash

pids=()

dump_logs() {
  local f
  for f in "${tmp}"/log/*; do
    [[ -f "${f}" ]] || continue
    printf '==> %s <==\n' "${f##*/}"
    tail -c 4000 "${f}"
  done
}

teardown() {
  local rc=$? id pid
  trap - EXIT INT TERM
  set +e
  # shellcheck disable=SC2154  # kSkip comes from script_lib.sh, sourced first
  if ((rc != 0 && rc != kSkip)); then
    log "FAILED (exit ${rc}); logs follow"
    dump_logs
  fi
  # Jobs first, while slurmctld and slurmd can still end them: their slurmstepd and worker
  # processes are not our children and would outlive the daemons. The cluster is ours alone, so
  # every job in it is one a test started (itself or through the scaler).
  if [[ -n "${SLURM_CONF:-}" && -f "${SLURM_CONF}" ]]; then
    local jobs
    jobs="$(squeue --noheader --format=%i 2>/dev/null | tr '\n' ' ')"
    for id in ${jobs}; do scancel "${id}" 2>/dev/null; done
    for _ in $(seq 100); do
      [[ -z "$(squeue --noheader 2>/dev/null)" ]] && break
      sleep 0.1
    done
  fi
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    pid="${pids[i]}"
    kill -TERM "${pid}" 2>/dev/null
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 50); do
      kill -0 "${pid}" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "${pid}" 2>/dev/null
    wait "${pid}" 2>/dev/null
  done
  if [[ -f "${tmp}/munge/munged.pid" ]]; then
    pid="$(cat "${tmp}/munge/munged.pid")"
    kill -TERM "${pid}" 2>/dev/null
    for _ in $(seq 50); do
      kill -0 "${pid}" 2>/dev/null || break
      sleep 0.1
    done
  fi
  if [[ "${EVALD_SLURM_KEEP:-0}" == 1 ]]; then
    log "kept ${tmp}"
  else
    rm -rf "${tmp}"
  fi
  exit "${rc}"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# slurm_cluster_start CPUS: the cluster, with CPUS CPUs on its one node (one per job task).
slurm_cluster_start() {
  local cpus="$1"
  # --- can this machine run Slurm at all? --------------------------------------------------
  ((EUID == 0)) || skip "needs root: slurmd launches job steps as the submitting user via setuid"
  for tool in munged mungekey slurmctld slurmd sbatch srun squeue scancel sinfo python3 flock; do
    command -v "${tool}" >/dev/null ||
      skip "${tool} not found; install slurm-wlm and munge (scripts/setup.sh does)"
  done

  tmp="$(mktemp -d /tmp/evald-slurm.XXXXXX)"  # short: the munge socket path must fit sun_path
  chmod 0711 "${tmp}"

  trap teardown EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM

  mkdir -p "${tmp}/munge" "${tmp}/state" "${tmp}/spool" "${tmp}/log" "${tmp}/jobs" "${tmp}/store"
  chmod 0700 "${tmp}/munge"

  # --- munge ----------------------------------------------------------------------------------
  mungekey --create --keyfile="${tmp}/munge/munge.key" >/dev/null 2>&1 ||
    skip "mungekey cannot create a key"
  chmod 0600 "${tmp}/munge/munge.key"
  munge_socket="${tmp}/munge/munge.socket"
  # munged forks into the background and writes its pid file; --force lets it run as root with
  # its files in a temp dir.
  munged --force --socket="${munge_socket}" --key-file="${tmp}/munge/munge.key" \
    --pid-file="${tmp}/munge/munged.pid" --seed-file="${tmp}/munge/munged.seed" \
    --log-file="${tmp}/log/munged.log" >"${tmp}/log/munged.out" 2>&1 ||
    skip "munged does not start here: $(tail -n 3 "${tmp}/log/munged.out" "${tmp}/log/munged.log" 2>/dev/null | tr '\n' ' ')"

  # --- slurm.conf -----------------------------------------------------------------------------
  ctld_port="$(free_port)"
  slurmd_port="$(free_port)"
  while [[ "${slurmd_port}" == "${ctld_port}" ]]; do slurmd_port="$(free_port)"; done
  # Our own cluster only: drop what an enclosing Slurm job (CI on a cluster) would pass down.
  while read -r variable; do unset "${variable}"; done < <(compgen -v | grep '^SLURM_' || true)
  export SLURM_CONF="${tmp}/slurm.conf"
  cat >"${SLURM_CONF}" <<CONF
ClusterName=evaldtest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=${ctld_port}
SlurmdPort=${slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=${munge_socket}
StateSaveLocation=${tmp}/state
SlurmdSpoolDir=${tmp}/spool
SlurmctldPidFile=${tmp}/slurmctld.pid
SlurmdPidFile=${tmp}/slurmd.pid
SlurmctldLogFile=${tmp}/log/slurmctld.log
SlurmdLogFile=${tmp}/log/slurmd.log
ProctrackType=proctrack/pgid
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
MailProg=/bin/true
# SIGKILL follows SIGTERM after KillWait: longer than the workers' drain below.
KillWait=10
SlurmdTimeout=30
MinJobAge=300
# The node has the CPUs asked for, whatever the machine has: they count jobs, nothing runs hot.
SlurmdParameters=config_overrides
NodeName=localhost NodeAddr=127.0.0.1 CPUs=${cpus} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF

  # --- slurmctld and slurmd in the foreground, as our children --------------------------------
  slurmctld -D -f "${SLURM_CONF}" >"${tmp}/log/slurmctld.out" 2>&1 &
  pids+=($!)
  slurmd -D -N localhost -f "${SLURM_CONF}" >"${tmp}/log/slurmd.out" 2>&1 &
  pids+=($!)

  node_idle() {
    local pid
    for pid in "${pids[@]}"; do
      kill -0 "${pid}" 2>/dev/null ||
        skip "a Slurm daemon exited at startup: $(tail -n 5 "${tmp}"/log/slurm*.out | tr '\n' ' ')"
    done
    [[ "$(sinfo --noheader --nodes=localhost --format=%T 2>/dev/null)" == idle ]]
  }
  local deadline=$((SECONDS + 20))
  until node_idle; do
    ((SECONDS < deadline)) ||
      skip "Slurm did not bring node localhost to idle in 20 s: $(sinfo --noheader 2>&1 | tr '\n' ' ')"
    sleep 0.1
  done
  log "slurm is up: controller port ${ctld_port}, node localhost idle"
}
