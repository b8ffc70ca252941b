# Stage headers and timing for scripts/test (sourced, not run).
#
#   stage NAME COMMAND [ARGS...]   prints a header, runs the command, records its duration.
#       The command runs in this shell with `set -e` in force (not in an `if`/`||` context,
#       which would silently disable it), so a failing step ends the script; the EXIT trap
#       then calls finish_stages, which names the failed stage.
#   finish_stages STATUS           records a stage cut short and prints the table of times

stage_names=()
stage_seconds=()
stage_verdicts=()
current_stage=
current_stage_started=0

stage() {
    current_stage=$1
    shift
    printf '\n\033[1m==== %s\033[0m\n' "$current_stage"
    current_stage_started=$SECONDS
    "$@"
    stage_names+=("$current_stage")
    stage_seconds+=($((SECONDS - current_stage_started)))
    stage_verdicts+=("ok")
    current_stage=
}

finish_stages() {
    local status=$1 total=0 i
    if [ -n "$current_stage" ]; then
        stage_names+=("$current_stage")
        stage_seconds+=($((SECONDS - current_stage_started)))
        stage_verdicts+=("FAILED (exit $status)")
        printf '\n\033[1;31m==== stage "%s" FAILED (exit %d)\033[0m\n' "$current_stage" "$status" >&2
    fi
    [ ${#stage_names[@]} -gt 0 ] || return 0
    echo
    echo "==== stage times"
    for i in "${!stage_names[@]}"; do
        printf '  %-48s %6ss  %s\n' "${stage_names[$i]}" "${stage_seconds[$i]}" "${stage_verdicts[$i]}"
        total=$((total + stage_seconds[i]))
    done
    printf '  %-48s %6ss\n' "total" "$total"
}
