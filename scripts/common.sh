# shellcheck shell=bash
# Shared helpers for the service scripts in this folder. Sourced, not run.
#
# Every script here runs with `set -euo pipefail`, says what went wrong in
# one line that names the script (`die`), and bounds every wait (`wait_for`),
# so a broken service ends the script with an error instead of a hang.

# The calling script's name, for messages.
QM_SELF=$(basename "$0")

# Prints a progress line on stderr, so stdout stays free for results.
note() {
    printf '%s: %s\n' "$QM_SELF" "$*" >&2
}

# Prints an error naming the script and exits 1.
die() {
    printf '%s: error: %s\n' "$QM_SELF" "$*" >&2
    exit 1
}

# Seconds since the epoch with milliseconds, for timings in messages.
now_ms() {
    date +%s%3N
}

# True when Debian package NAME is installed.
pkg_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

# Installs the Debian packages among "$@" that are missing, and only those.
#
# Needs root (apt-get). `--no-install-recommends` keeps the install small.
# While it runs, a policy-rc.d that refuses every service start is in place
# (unless the machine already has one): package scripts would otherwise start
# a system-wide sshd on port 22, or a munged/slurmctld with the packaged
# configuration; these scripts start their own daemons from their own folder.
apt_install_missing() {
    local missing=() pkg
    for pkg in "$@"; do
        pkg_installed "$pkg" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" -eq 0 ] ||
        die "packages missing: ${missing[*]}; run this script as root, or install them with: sudo apt-get install ${missing[*]}"
    command -v apt-get >/dev/null ||
        die "packages missing: ${missing[*]}, and there is no apt-get here (this script supports Debian and its derivatives)"
    note "installing ${missing[*]}"
    local policy=/usr/sbin/policy-rc.d made_policy=0 rc=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\n# Temporary: refuse service starts while packages install.\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        made_policy=1
    fi
    local apt=(env DEBIAN_FRONTEND=noninteractive apt-get -q -y -o DPkg::Lock::Timeout=300)
    {
        "${apt[@]}" update &&
            "${apt[@]}" install --no-install-recommends "${missing[@]}"
    } >"${TMPDIR:-/tmp}/quicmesh-apt.log" 2>&1 || rc=$?
    [ "$made_policy" -eq 1 ] && rm -f "$policy"
    if [ "$rc" -ne 0 ]; then
        tail -n 30 "${TMPDIR:-/tmp}/quicmesh-apt.log" >&2
        die "apt-get could not install ${missing[*]} (exit $rc; full log in ${TMPDIR:-/tmp}/quicmesh-apt.log)"
    fi
    rm -f "${TMPDIR:-/tmp}/quicmesh-apt.log"
    for pkg in "${missing[@]}"; do
        pkg_installed "$pkg" || die "apt-get finished but package $pkg is still not installed"
    done
}

# wait_for SECONDS WHAT CMD...: runs CMD every 0.2 s until it succeeds.
# Returns 1 (after a message naming WHAT) if SECONDS pass first.
wait_for() {
    local secs=$1 what=$2
    shift 2
    local deadline=$(($(now_ms) + secs * 1000))
    until "$@" >/dev/null 2>&1; do
        if [ "$(now_ms)" -ge "$deadline" ]; then
            note "timed out after ${secs}s waiting for $what"
            return 1
        fi
        sleep 0.2
    done
}

# Prints the pid stored in FILE if that process is alive (not a zombie) and
# its command name (/proc/PID/comm) is NAME; prints nothing otherwise. The
# name check keeps a stale pid file from pointing at an unrelated process
# that got the same pid.
live_pid() {
    local file=$1 name=$2 pid
    [ -r "$file" ] || return 0
    pid=$(tr -dc '0-9' <"$file")
    [ -n "$pid" ] || return 0
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ] && ! pid_gone "$pid" && echo "$pid"
    return 0
}

# stop_pid PID WHAT SECONDS: SIGTERM, then SIGKILL if PID is still alive
# after SECONDS. Waits (bounded) until the process is gone.
stop_pid() {
    local pid=$1 what=$2 secs=$3
    kill -TERM "$pid" 2>/dev/null || return 0
    if ! wait_for "$secs" "$what (pid $pid) to exit after SIGTERM" pid_gone "$pid"; then
        note "sending SIGKILL to $what (pid $pid)"
        kill -KILL "$pid" 2>/dev/null || true
        wait_for 10 "$what (pid $pid) to exit after SIGKILL" pid_gone "$pid" ||
            note "warning: $what (pid $pid) is still alive"
    fi
}

# True when no process PID exists (a zombie counts as gone).
pid_gone() {
    local state
    state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 0
    [ -z "$state" ] || [ "$state" = Z ]
}

# Prints TEXT with every character that is special in an extended regular
# expression escaped.
regex_quote() {
    printf '%s' "$1" | sed 's/[][\.*^$+?(){}|]/\\&/g'
}

# Prints the pid of every live process (other than this shell) whose
# environment has a line that matches the extended regular expression
# PATTERN in full, e.g. 'SLURM_CONF=/tmp/x/slurm\.conf'. Used to find what a
# daemon of ours left behind: its children inherit a variable that names
# our state folder or port.
pids_with_env() {
    local pattern=$1 environ pid
    for environ in /proc/[0-9]*/environ; do
        pid=${environ#/proc/}
        pid=${pid%/environ}
        [ "$pid" != $$ ] || continue
        pid_gone "$pid" && continue
        { tr '\0' '\n' <"$environ"; } 2>/dev/null | grep -qxE -- "$pattern" && echo "$pid"
    done
    return 0
}

# stop_pidfile FILE NAME SECONDS: stops the process named NAME whose pid is
# in FILE (if it is alive) and removes FILE.
stop_pidfile() {
    local file=$1 name=$2 secs=$3 pid
    pid=$(live_pid "$file" "$name")
    if [ -n "$pid" ]; then
        note "stopping $name (pid $pid)"
        stop_pid "$pid" "$name" "$secs"
    fi
    rm -f "$file"
}

# Refuses a state folder that is not an absolute path, or is /.
check_state_dir() {
    case "$1" in
    /) die "refusing to use / as the state folder" ;;
    /*) ;;
    *) die "state folder must be an absolute path, got '$1'" ;;
    esac
}

# remove_state_dir DIR MARKER: deletes DIR, but only if it holds the file
# MARKER this family of scripts writes on creation, so a mistyped variable
# can never make a "down" script delete somebody's folder.
remove_state_dir() {
    local dir=$1 marker=$2
    [ -e "$dir" ] || return 0
    [ -e "$dir/$marker" ] ||
        die "$dir was not made by these scripts (no $marker in it); not deleting it"
    rm -rf -- "$dir"
}
