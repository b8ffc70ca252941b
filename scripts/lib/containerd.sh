# Starts containerd for the tests if none answers, and stops it again (sourced).

containerd_socket=/run/containerd/containerd.sock
containerd_log=/tmp/chaos-test-containerd.log
# Set only when this script started containerd: then, and only then, we stop it at the end.
started_containerd_pid=

containerd_answers() {
    ctr --address "$containerd_socket" --connect-timeout 2s --timeout 5s version >/dev/null 2>&1
}

ensure_containerd_running() {
    if containerd_answers; then
        echo "containerd already answers on $containerd_socket"
        return 0
    fi
    echo "starting containerd (log: $containerd_log)"
    containerd >"$containerd_log" 2>&1 &
    started_containerd_pid=$!
    local attempt
    for attempt in $(seq 1 60); do
        if containerd_answers; then
            echo "containerd answers (pid $started_containerd_pid)"
            return 0
        fi
        kill -0 "$started_containerd_pid" 2>/dev/null || break
        sleep 0.5
    done
    echo "containerd did not start; see $containerd_log:" >&2
    tail -n 20 "$containerd_log" >&2
    return 1
}

stop_started_containerd() {
    [ -n "$started_containerd_pid" ] || return 0
    kill -TERM "$started_containerd_pid" 2>/dev/null || true
    local attempt
    for attempt in $(seq 1 40); do
        kill -0 "$started_containerd_pid" 2>/dev/null || break
        sleep 0.25
    done
    kill -KILL "$started_containerd_pid" 2>/dev/null || true
    wait "$started_containerd_pid" 2>/dev/null || true
    echo "stopped the containerd this run started (pid $started_containerd_pid)"
    started_containerd_pid=
}
