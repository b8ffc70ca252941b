#!/usr/bin/env bash
# Runs INSIDE the virtme-ng guest (Debian 6.1 kernel), started by tests/vm/run.
#
#   guest.sh REPO_DIR COMMAND_FILE
#
# Prepares the node the way a cgroup v2 Kubernetes node looks to the agent (cgroup v2 with every
# controller delegated from the root, netem modules, containerd at the usual socket), then runs
# each NUL-separated shell command of COMMAND_FILE in order, prints a summary and exits non-zero
# if the setup or any command failed. The guest is thrown away afterwards, but containerd is
# still stopped cleanly so its shims and tasks do not die mid-write.
set -uo pipefail

repo_dir=$1
command_file=$2

work=/run/chaos-test-vm
mkdir -p "$work"
containerd_log=$work/containerd.log
containerd_pid=

say() { printf '[vm %6.1fs] %s\n' "$(cut -d' ' -f1 /proc/uptime)" "$*"; }

setup_cgroup_v2() {
    # virtme-ng mounts cgroup2 at /sys/fs/cgroup but delegates no controller; systemd would
    # enable all of them in the root's subtree_control, and runc needs that to set limits.
    if [ "$(stat -f -c %T /sys/fs/cgroup)" != cgroup2fs ]; then
        mount -t cgroup2 none /sys/fs/cgroup || return 1
    fi
    local controller failed=0
    for controller in $(cat /sys/fs/cgroup/cgroup.controllers); do
        if ! echo "+$controller" >/sys/fs/cgroup/cgroup.subtree_control; then
            say "cannot enable cgroup controller $controller"
            failed=1
        fi
    done
    say "cgroup v2 root delegates: $(cat /sys/fs/cgroup/cgroup.subtree_control)"
    return $failed
}

load_modules() {
    local module failed=0
    # loop and ext4: the IO tests' own disk.
    for module in sch_netem sch_prio cls_u32 ifb loop ext4; do
        if ! modprobe "$module"; then
            say "modprobe $module FAILED"
            failed=1
        fi
    done
    [ $failed = 0 ] && say "loaded sch_netem sch_prio cls_u32 ifb loop ext4"
    return $failed
}

start_containerd() {
    # The guest's root is the host's, read-only over 9p: give containerd its own tmpfs state.
    mkdir -p /var/lib/containerd /run/containerd
    mount -t tmpfs chaos-test-containerd /var/lib/containerd || return 1
    # Own config: the host's may enable plugins (CRI with CNI paths) the tests do not use and
    # that only slow the start under emulation.
    cat >"$work/containerd.toml" <<'EOF'
version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "/run/containerd/containerd.sock"
EOF
    containerd --config "$work/containerd.toml" >"$containerd_log" 2>&1 &
    containerd_pid=$!
    local attempt
    for attempt in $(seq 1 120); do
        if ctr --connect-timeout 2s --timeout 5s version >/dev/null 2>&1; then
            say "containerd answers on /run/containerd/containerd.sock (pid $containerd_pid)"
            return 0
        fi
        if ! kill -0 "$containerd_pid" 2>/dev/null; then break; fi
        sleep 0.5
    done
    say "containerd did not come up; last log lines:"
    tail -n 30 "$containerd_log"
    return 1
}

stop_containerd() {
    [ -n "$containerd_pid" ] || return 0
    local id namespace
    # Tests clean up after themselves; anything left is reported and removed here.
    for namespace in $(ctr --timeout 10s namespaces ls -q 2>/dev/null); do
        for id in $(ctr --timeout 10s -n "$namespace" task ls -q 2>/dev/null); do
            say "leftover task $namespace/$id"
            ctr --timeout 10s -n "$namespace" task kill -s KILL "$id" >/dev/null 2>&1
            ctr --timeout 10s -n "$namespace" task rm -f "$id" >/dev/null 2>&1
        done
    done
    kill -TERM "$containerd_pid" 2>/dev/null
    local attempt
    for attempt in $(seq 1 40); do
        kill -0 "$containerd_pid" 2>/dev/null || break
        sleep 0.25
    done
    if kill -0 "$containerd_pid" 2>/dev/null; then
        say "containerd ignored SIGTERM; killing it"
        kill -KILL "$containerd_pid" 2>/dev/null
    fi
    wait "$containerd_pid" 2>/dev/null
    say "containerd stopped"
}

say "guest up: kernel $(uname -r)"
setup_failures=()
setup_cgroup_v2 || setup_failures+=("cgroup v2 setup")
load_modules || setup_failures+=("modprobe")
if ! start_containerd; then
    setup_failures+=("containerd")
fi
trap stop_containerd EXIT

# A pulse every 5 minutes: a CI log whose VM stage timed out without a word (it happened once,
# 2026-12-03, after 3 of 81 tests) then shows whether the guest lived, its memory and its load.
(
    while sleep 300; do
        say "pulse: $(awk '/MemAvailable/ {print int($2 / 1024)}' /proc/meminfo) MiB available, load $(cut -d' ' -f1-3 /proc/loadavg), $(ls /proc | grep -c '^[0-9]') processes"
    done
) &
pulse_pid=$!

cd "$repo_dir" || exit 1
results=()
failed=0
if [ ${#setup_failures[@]} -gt 0 ] && [[ " ${setup_failures[*]} " == *containerd* ]]; then
    say "not running the commands: containerd is required"
    failed=1
else
    index=0
    while IFS= read -r -d '' command; do
        index=$((index + 1))
        say "=== command $index: $command"
        started=$(cut -d' ' -f1 /proc/uptime)
        bash -c "$command" 2>&1
        rc=$?
        finished=$(cut -d' ' -f1 /proc/uptime)
        seconds=$(awk -v a="$started" -v b="$finished" 'BEGIN { printf "%.1f", b - a }')
        if [ $rc = 0 ]; then verdict=PASS; else verdict="FAIL (exit $rc)"; failed=1; fi
        results+=("$(printf '%-16s %7ss  %s' "$verdict" "$seconds" "$command")")
    done <"$command_file"
fi

stop_containerd
trap - EXIT
kill "$pulse_pid" 2>/dev/null

echo
say "=== VM summary (kernel $(uname -r), cgroup v2)"
for problem in "${setup_failures[@]}"; do
    echo "SETUP FAILED     $problem"
    failed=1
done
for line in "${results[@]}"; do
    echo "$line"
done
exit $failed
