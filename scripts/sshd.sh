# shellcheck shell=bash disable=SC2034 # the variables are for the scripts that source this
# What scripts/sshd-up makes in its folder, shared with sshd-down.
# Sourced after common.sh, with the folder as $1 of the calling script.

# The folder: an argument, else $QUICMESH_SSH_DIR, else /tmp/quicmesh-sshd;
# made absolute, since sshd and ssh configs need absolute paths.
DIR=${1:-${QUICMESH_SSH_DIR:-/tmp/quicmesh-sshd}}
DIR=$(realpath -m -- "$DIR")
check_state_dir "$DIR"
# Written on creation; sshd-down deletes only a folder that has it.
MARKER=.quicmesh-sshd
# The host name ssh_config defines.
ALIAS=quicmesh-test

# Prints sshd's pid if it is alive.
sshd_pid() { live_pid "$DIR/sshd.pid" sshd; }
sshd_running() { [ -n "$(sshd_pid)" ]; }
