# shellcheck shell=bash disable=SC2034 # the variables are for the scripts that source this
# Where scripts/slurm-up keeps the cluster's state, shared with slurm-down.
# Sourced after common.sh.

DIR=${QUICMESH_SLURM_DIR:-/tmp/quicmesh-slurm}
check_state_dir "$DIR"
PORT=${QUICMESH_SLURM_PORT:-6817}
# Written on creation; slurm-down deletes only a folder that has it.
MARKER=.quicmesh-slurm
# Seconds between SIGTERM and SIGKILL for a cancelled job's tasks.
KILL_WAIT=10
# Seconds after which slurmctld cancels a job whose srun stopped answering.
INACTIVE_LIMIT=20
MUNGE_DIR=$DIR/munge
CONF=$DIR/slurm.conf
export SLURM_CONF=$CONF

# The three daemons: each prints its pid if it is alive.
munged_pid() { live_pid "$MUNGE_DIR/munged.pid" munged; }
slurmctld_pid() { live_pid "$DIR/run/slurmctld.pid" slurmctld; }
slurmd_pid() { live_pid "$DIR/run/slurmd.pid" slurmd; }
# is_running FN: true when FN (one of the three above) prints a pid.
is_running() { [ -n "$("$1")" ]; }
