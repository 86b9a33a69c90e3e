#!/usr/bin/env bash
# Lifecycle of one Batch worker: start a Celery worker, keep it while it has work, stop it once
# it has been idle for IDLE_SECONDS, and exit with a status that says what happened.
#
# Idle means: this worker held no message (none running, none reserved, none waiting for its ETA;
# the worker says so in its state file, see held_messages.py) and the queue showed nothing visible
# or delayed. Messages other workers hold never keep it alive. A reading that cannot be made (no
# fresh state file, queue unreadable) never counts as idle. Before it stops, the worker drains:
# it opens no new long poll and gives back what an open one still brings.
#
# The job's end: Batch stops the job JOB_TIMEOUT_SECONDS after it started, whatever it runs. The
# script counts from its own start (minus a margin for the container's start) and takes no task it
# could not finish before then: once the take window (limits.take_window_seconds: job timeout -
# task time limit - stop grace - margins) has passed, it drains, lets the worker finish what it
# runs, gives back what it held unstarted and exits 7; the scaler starts another worker if work
# remains. So the timeout never cuts a task. Unset: no deadline (a local run).
#
# Exit status (the job's exit code; Batch's retry strategy can match on it):
#   0    idle for IDLE_SECONDS; the worker stopped cleanly, holding nothing
#   2    configuration error, or the worker did not start
#   3    the worker died on its own (crash, OOM kill); what it held was made visible at once
#   4    the queue could not be read for MAX_FAILED_READINGS polls in a row
#   5    the worker did not stop within STOP_TIMEOUT_SECONDS after TERM and was killed
#   6    the worker wrote no state (held.json) for MAX_FAILED_READINGS polls in a row (wedged, or
#        its consumer never started); it was stopped and what it last reported holding given back
#   7    the job's deadline: no more task could finish before JOB_TIMEOUT_SECONDS; it took no more,
#        every task it had started finished, what it held unstarted was given back at once
#        (Batch does not retry it; the scaler replaces the worker if work remains)
#   130  stopped by SIGINT, 143 stopped by SIGTERM (Batch stop, job timeout, Spot reclaim): the
#        running task had STOP_GRACE_SECONDS to finish; if it did not, it was stopped and its
#        message made visible at once, so another worker starts it within seconds. Every wait of
#        this script (start, drain, the stops of statuses 0, 4, 5, 6 and 7) ends within a second of
#        the signal and takes this path.
# Nothing is lost at any exit: the worker acks a message only after its task has finished, keeps
# what it holds invisible by a heartbeat, and what it gives back unfinished is visible at once;
# only if the whole container dies does a message wait out the queue's visibility timeout.
#
# Environment (defaults in brackets): IDLE_SECONDS [60], POLL_SECONDS [10],
# STOP_GRACE_SECONDS [20], MAX_FAILED_READINGS [30], STOP_TIMEOUT_SECONDS [TASK_TIME_LIMIT_SECONDS
# + 30], START_TIMEOUT_SECONDS [60], DRAIN_TIMEOUT_SECONDS [10], JOB_TIMEOUT_SECONDS [unset: no
# deadline], JOB_START_MARGIN_SECONDS [30] and JOB_STOP_MARGIN_SECONDS [10] (limits.py),
# WARM_UNTIL [0: none; epoch seconds before which the idle exit does not apply: a warm worker the
# scaler started for a pool's min_workers],
# WORKER_RUN_DIR [a new temporary folder], PYTHON [python3], LOG_LEVEL [INFO]; the queue and
# worker settings (HEARTBEAT_SECONDS among them) are read by worker_settings.py.
set -euo pipefail

# Batch's clock for the job timeout started a moment before this line (JOB_START_MARGIN_SECONDS).
started_realtime="${EPOCHREALTIME/[.,]/}"
readonly STARTED_MS=$(( started_realtime / 1000 ))

readonly EXIT_DRAINED=0 EXIT_CONFIG=2 EXIT_WORKER_DIED=3 EXIT_QUEUE_UNREADABLE=4 EXIT_STOP_TIMEOUT=5 EXIT_NO_STATE=6
readonly EXIT_JOB_DEADLINE=7

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly SCRIPT_DIR
PYTHON="${PYTHON:-python3}"
IDLE_SECONDS="${IDLE_SECONDS:-60}"
POLL_SECONDS="${POLL_SECONDS:-10}"
MAX_FAILED_READINGS="${MAX_FAILED_READINGS:-30}"
# The job sets it; the default is limits.DEFAULT_TASK_TIME_LIMIT_SECONDS (a test holds them equal).
TASK_LIMIT_SECONDS="${TASK_TIME_LIMIT_SECONDS:-10800}"
STOP_TIMEOUT_SECONDS="${STOP_TIMEOUT_SECONDS:-$(( TASK_LIMIT_SECONDS + 30 ))}"
START_TIMEOUT_SECONDS="${START_TIMEOUT_SECONDS:-60}"
STOP_GRACE_SECONDS="${STOP_GRACE_SECONDS:-20}"
# Well above the worker's long poll (limits.LONG_POLL_SECONDS), which a drain waits out.
DRAIN_TIMEOUT_SECONDS="${DRAIN_TIMEOUT_SECONDS:-10}"
LOG_LEVEL="${LOG_LEVEL:-INFO}"
JOB_TIMEOUT_SECONDS="${JOB_TIMEOUT_SECONDS:-}"
WARM_UNTIL="${WARM_UNTIL:-0}"

log() { printf '%s run_celery_worker: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*"; }

for name in IDLE_SECONDS POLL_SECONDS MAX_FAILED_READINGS STOP_TIMEOUT_SECONDS START_TIMEOUT_SECONDS \
    STOP_GRACE_SECONDS DRAIN_TIMEOUT_SECONDS; do
    if [[ ! "${!name}" =~ ^[1-9][0-9]*$ ]]; then
        log "configuration error: ${name}=${!name} is not allowed; expected a whole number of at least 1"
        exit "$EXIT_CONFIG"
    fi
done
if [[ ! "$WARM_UNTIL" =~ ^[0-9]+$ ]]; then
    log "configuration error: WARM_UNTIL=${WARM_UNTIL} is not allowed; expected epoch seconds (0: not kept warm)"
    exit "$EXIT_CONFIG"
fi

# The job's deadline: the last moment to take a task (take_until_ms) and Batch's timeout
# (job_end_ms), both counted from this script's start. The rule is limits.py's, as at synth.
take_until_ms=""
job_end_ms=""
if [[ -n "$JOB_TIMEOUT_SECONDS" ]]; then
    for name in JOB_TIMEOUT_SECONDS JOB_START_MARGIN_SECONDS JOB_STOP_MARGIN_SECONDS; do
        if [[ -n "${!name:-}" && ! "${!name}" =~ ^[0-9]+$ ]]; then
            log "configuration error: ${name}=${!name} is not allowed; expected a whole number of seconds"
            exit "$EXIT_CONFIG"
        fi
    done
    margins=()
    if [[ -n "${JOB_START_MARGIN_SECONDS:-}${JOB_STOP_MARGIN_SECONDS:-}" ]]; then
        margins=("${JOB_START_MARGIN_SECONDS:-30}" "${JOB_STOP_MARGIN_SECONDS:-10}")
    fi
    take_window="$("$PYTHON" "$SCRIPT_DIR/limits.py" take-window "$JOB_TIMEOUT_SECONDS" \
        "${TASK_LIMIT_SECONDS}" "$STOP_GRACE_SECONDS" "$IDLE_SECONDS" "${margins[@]}" 2>&1)" || {
        log "$take_window"
        exit "$EXIT_CONFIG"
    }
    take_until_ms=$(( STARTED_MS + take_window * 1000 ))
    job_end_ms=$(( STARTED_MS + (JOB_TIMEOUT_SECONDS - ${JOB_START_MARGIN_SECONDS:-30}) * 1000 ))
fi

# Stop signals are trapped from here on: every wait below ends within a second of one.
stop_signal=""
stop_signal_ms=""
sleep_pid=""
on_signal() {
    stop_signal="$1"
    # The grace counts from the signal, not from when the loop gets to it.
    stop_signal_ms="${stop_signal_ms:-$(now_ms)}"
    # The poll loop may be sleeping: end the sleep so the signal is acted on at once.
    if [[ -n "$sleep_pid" ]]; then
        kill "$sleep_pid" 2>/dev/null || true
    fi
}
trap 'on_signal TERM' TERM
trap 'on_signal INT' INT

now_ms() {
    local now="${EPOCHREALTIME/[.,]/}"
    echo $(( now / 1000 ))
}

# Run a command in the background and wait for it, so that a stop signal ends the wait at once
# (bash runs a trap only once a foreground command has ended). Returns its status, or 143/130
# with the command ended if a stop signal came first.
interruptible() {
    local pid status=0
    "$@" &
    pid=$!
    wait "$pid" || status=$?
    if [[ -n "$stop_signal" ]]; then
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        [[ "$stop_signal" == "INT" ]] && return 130
        return 143
    fi
    return "$status"
}

# Stopped before the worker was started: nothing was taken, nothing to give back.
exit_if_stopped_early() {
    if [[ -n "$stop_signal" ]]; then
        log "received SIG$stop_signal before the worker started; exiting"
        [[ "$stop_signal" == "INT" ]] && exit 130
        exit 143
    fi
}

# One line about the settings, or one line about what is wrong with them.
settings_status=0
interruptible "$PYTHON" "$SCRIPT_DIR/worker_settings.py" || settings_status=$?
exit_if_stopped_early
if (( settings_status != 0 )); then
    exit "$EXIT_CONFIG"
fi

# Failed tasks are left for the queue's redrive policy to move to the dead-letter queue; without
# one, kombu deletes them. A policy that cannot be read now is checked again by kombu itself.
dlq_status=0
interruptible "$PYTHON" "$SCRIPT_DIR/queue_depth.py" --require-dead-letter-queue || dlq_status=$?
exit_if_stopped_early
if (( dlq_status == 2 )); then
    exit "$EXIT_CONFIG"
elif (( dlq_status != 0 )); then
    log "could not check the queue's redrive policy; starting anyway"
fi

RUN_DIR="${WORKER_RUN_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/celery-worker.XXXXXX")}"
readonly RUN_DIR
mkdir -p "$RUN_DIR"
readonly PIDFILE="$RUN_DIR/worker.pid" LOGFILE="$RUN_DIR/worker.log"
# Written and read by held_messages.py (the worker's state) and this script (the drain).
readonly STOP_FILE="$RUN_DIR/stop-consuming" DRAINED_FILE="$RUN_DIR/drained"
rm -f "$PIDFILE" "$STOP_FILE" "$DRAINED_FILE" "$RUN_DIR/held.json"
: >>"$LOGFILE"
# The worker learns its run folder (where it writes what it holds) from here.
export WORKER_RUN_DIR="$RUN_DIR" STOP_GRACE_SECONDS

worker_pid=""
worker_pgid=""
tail_pid=""

# True while the worker process exists and is not a zombie. A detached worker is not our child:
# once killed it is reparented and stays a zombie until PID 1 reaps it, and kill -0 still succeeds.
worker_alive() {
    local stat state
    [[ -n "$worker_pid" ]] || return 1
    if [[ -r "/proc/$worker_pid/stat" ]]; then
        stat="$(cat "/proc/$worker_pid/stat" 2>/dev/null)" || return 1
        state="${stat##*) }"
        [[ "${state:0:1}" != "Z" ]]
    else
        kill -0 "$worker_pid" 2>/dev/null
    fi
}

# The process group of a process (field 5 of /proc/PID/stat), empty if unknown.
process_group() {
    local stat fields
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 0
    read -r -a fields <<<"${stat##*) }"
    echo "${fields[2]:-}"
}

# Kill the worker with its pool processes. The detached worker runs in its own session; its
# group is only used when it is not ours, so this script never kills itself.
kill_worker_group() {
    if [[ -n "$worker_pgid" ]]; then
        kill -KILL -- "-$worker_pgid" 2>/dev/null || true
    fi
    kill -KILL "$worker_pid" 2>/dev/null || true
}

# Let tail print the worker's last lines (it follows the file by inotify, so they are out at
# once; with --pid it may take a second more to notice the worker is gone), then end it.
finish_log() {
    local waited=0
    if [[ -n "$tail_pid" ]]; then
        while kill -0 "$tail_pid" 2>/dev/null && (( waited < 3 )); do
            sleep 0.1
            waited=$(( waited + 1 ))
        done
        kill "$tail_pid" 2>/dev/null || true
        wait "$tail_pid" 2>/dev/null || true
        tail_pid=""
    fi
}

# Warm shutdown: the worker finishes its running task, then exits, within $1 seconds (default
# STOP_TIMEOUT_SECONDS). Returns 1 if it had to be killed. A stop signal meanwhile is acted on at
# once (handle_stop_signal: the running task gets the grace, counted from the signal).
stop_worker() {
    local timeout="${1:-$STOP_TIMEOUT_SECONDS}" deadline_ms
    worker_alive || return 0
    [[ -n "$stop_signal" ]] && handle_stop_signal
    log "sending TERM to worker $worker_pid (warm shutdown, up to ${timeout} s)"
    kill -TERM "$worker_pid" 2>/dev/null || true
    deadline_ms=$(( $(now_ms) + timeout * 1000 ))
    while worker_alive; do
        [[ -n "$stop_signal" ]] && handle_stop_signal
        if (( $(now_ms) >= deadline_ms )); then
            log "worker $worker_pid did not stop within ${timeout} s; killing it (its task returns to the queue)"
            kill_worker_group
            return 1
        fi
        pause 0.2
    done
    log "worker $worker_pid stopped"
    return 0
}

# Make what the worker held visible again at once (after it died or was killed), from its last
# state file; a message it acked since is refused by SQS and skipped.
release_held() {
    "$PYTHON" "$SCRIPT_DIR/held_messages.py" release | while IFS= read -r line; do log "$line"; done || true
}

# Stop taking work: no new long poll; what an open one brings is given back. Returns once no poll
# is open (the worker writes the marker), the worker is gone, a stop signal came or time is up.
drain_worker() {
    local deadline=$(( SECONDS + DRAIN_TIMEOUT_SECONDS ))
    touch "$STOP_FILE"
    while [[ ! -e "$DRAINED_FILE" ]] && worker_alive && [[ -z "$stop_signal" ]]; do
        if (( SECONDS >= deadline )); then
            log "the worker's long poll did not end within ${DRAIN_TIMEOUT_SECONDS} s; stopping it anyway"
            return 0
        fi
        pause 0.2
    done
}

finish() {
    local status="$1"
    finish_log
    log "exiting with status $status"
    exit "$status"
}

# Batch stops a job with SIGTERM and kills it 30 s later. The running task gets STOP_GRACE_SECONDS;
# a task that cannot finish in time is stopped and its message given back at once.
handle_stop_signal() {
    local status=143 deadline_ms
    [[ "$stop_signal" == "INT" ]] && status=130
    deadline_ms=$(( ${stop_signal_ms:-$(now_ms)} + STOP_GRACE_SECONDS * 1000 ))
    log "received SIG$stop_signal: taking no more work; the running task has ${STOP_GRACE_SECONDS} s to finish"
    trap '' TERM INT
    if worker_alive; then
        touch "$STOP_FILE"
        while [[ ! -e "$DRAINED_FILE" ]] && worker_alive && (( $(now_ms) < deadline_ms )); do
            sleep 0.2
        done
        kill -TERM "$worker_pid" 2>/dev/null || true
        while worker_alive && (( $(now_ms) < deadline_ms )); do
            sleep 0.2
        done
        if worker_alive; then
            log "the running task did not finish within ${STOP_GRACE_SECONDS} s; stopping it and giving its message back"
            kill_worker_group
            release_held
        fi
    fi
    finish "$status"
}

# Sleep that a trapped signal interrupts (bash runs traps only between commands). A signal that
# lands before sleep_pid is set finds no sleep to end: the flag, checked once it is set, ends it.
pause() {
    [[ -z "$stop_signal" ]] || return 0
    sleep "$1" &
    sleep_pid=$!
    if [[ -n "$stop_signal" ]]; then
        kill "$sleep_pid" 2>/dev/null || true
    fi
    wait "$sleep_pid" 2>/dev/null || true
    sleep_pid=""
}

# The job's deadline: take no more tasks, let the worker finish what it runs (each task ends by its
# hard time limit, in time for Batch's timeout), give back what it held unstarted, exit 7.
leave_before_job_timeout() {
    local left_s
    log "job deadline: a task taken now could not finish before the job timeout (${JOB_TIMEOUT_SECONDS} s); taking no more tasks, finishing those it runs"
    drain_worker
    [[ -n "$stop_signal" ]] && handle_stop_signal
    # Whatever is left before Batch's TERM, less the grace that TERM would give.
    left_s=$(( (job_end_ms - $(now_ms)) / 1000 - STOP_GRACE_SECONDS ))
    (( left_s >= 1 )) || left_s=1
    if ! stop_worker "$left_s"; then
        release_held
        finish "$EXIT_STOP_TIMEOUT"
    fi
    # Messages it held but never started (a countdown, a prefetched one) are visible at once; what
    # it acked is refused by SQS and skipped.
    release_held
    finish "$EXIT_JOB_DEADLINE"
}

# Set held to the number of messages the worker holds, from its state file; fails when the file is
# missing or stale (the worker is wedged or not yet consuming): unknown is never idle.
held=""
read_held() {
    held="$("$PYTHON" "$SCRIPT_DIR/held_messages.py" held 2>/dev/null)" || return 1
    [[ "$held" =~ ^[0-9]+$ ]]
}

# Set total to the queue's visible + delayed count (what no worker holds yet). The reading runs in
# the background (not in $(...)) so that a stop signal is acted on during a slow reading.
total=""
read_total() {
    local status=0
    "$PYTHON" "$SCRIPT_DIR/queue_depth.py" --waiting >"$RUN_DIR/depth" &
    local reader_pid=$!
    wait "$reader_pid" || status=$?
    if [[ -n "$stop_signal" ]]; then
        kill "$reader_pid" 2>/dev/null || true
        wait "$reader_pid" 2>/dev/null || true
        handle_stop_signal
    fi
    (( status == 0 )) || return "$status"
    total="$(<"$RUN_DIR/depth")"
    [[ "$total" =~ ^[0-9]+$ ]]
}

cd "$SCRIPT_DIR"
exit_if_stopped_early
log "starting Celery worker (run folder $RUN_DIR)"
# --workdir keeps imports of task modules relative to this folder after the worker detaches.
"$PYTHON" -m celery --workdir="$SCRIPT_DIR" -A celery_app worker \
    --detach --pidfile="$PIDFILE" --logfile="$LOGFILE" \
    --loglevel="$LOG_LEVEL" --without-gossip --without-mingle --without-heartbeat

# The pidfile appears once the detached worker runs. The worker re-executes itself after
# detaching and replaces its own pidfile then (same PID), so the file can vanish for a moment.
start_deadline=$(( SECONDS + START_TIMEOUT_SECONDS ))
while true; do
    worker_pid="$(tr -dc '0-9' 2>/dev/null <"$PIDFILE" || true)"
    if [[ -n "$worker_pid" || -n "$stop_signal" ]] || (( SECONDS >= start_deadline )); then
        break
    fi
    sleep 0.1
done
if [[ -n "$worker_pid" ]]; then
    worker_pgid="$(process_group "$worker_pid")"
    if [[ "$worker_pgid" == "$(process_group $$)" ]]; then
        worker_pgid=""
    fi
fi
# Stream the worker's log to our stdout (CloudWatch); tail ends by itself when the worker does.
tail -n +1 -F -s 0.2 --pid="${worker_pid:-$$}" "$LOGFILE" 2>/dev/null &
tail_pid=$!
[[ -n "$stop_signal" ]] && handle_stop_signal
if ! worker_alive; then
    log "worker did not start within ${START_TIMEOUT_SECONDS} s (see its log above)"
    finish "$EXIT_CONFIG"
fi
log "worker $worker_pid running; stopping it after ${IDLE_SECONDS} s holding no message with nothing waiting in the queue (checked every ${POLL_SECONDS} s)"
if (( WARM_UNTIL * 1000 > STARTED_MS )); then
    log "kept warm (a pool's min_workers): no idle exit before $(date -u -d "@${WARM_UNTIL}" +%Y-%m-%dT%H:%M:%SZ)"
fi
if [[ -n "$take_until_ms" ]]; then
    log "taking tasks for $(( (take_until_ms - $(now_ms)) / 1000 )) s more: the job timeout is ${JOB_TIMEOUT_SECONDS} s from the job's start and a task may run ${TASK_LIMIT_SECONDS} s"
fi

empty_since_ms=""
failed_readings=0
unknown_readings=0
state_known=1
while true; do
    [[ -n "$stop_signal" ]] && handle_stop_signal
    if ! worker_alive; then
        log "worker $worker_pid exited on its own; giving back what it held"
        # Its pool processes would otherwise run on, orphaned, outside any lifecycle.
        kill_worker_group
        release_held
        finish "$EXIT_WORKER_DIED"
    fi
    if [[ -n "$take_until_ms" ]] && (( $(now_ms) >= take_until_ms )); then
        leave_before_job_timeout
    fi

    poll_started_ms="$(now_ms)"
    held_known=0
    if read_held; then
        held_known=1
        state_known=1
        unknown_readings=0
    elif (( state_known )); then
        log "no fresh state from the worker (its held.json); not idle until it writes one"
        state_known=0
    fi
    if (( held_known && held > 0 )); then
        # Busy: its own state says so; the queue need not be read.
        empty_since_ms=""
        failed_readings=0
        unknown_readings=0
    elif read_total; then
        failed_readings=0
        # The queue answers but the worker does not: after as many polls as an unreadable queue
        # is given, it is wedged (or never consumed) and only costs money.
        unknown_readings=$(( held_known ? 0 : unknown_readings + 1 ))
        if (( unknown_readings >= MAX_FAILED_READINGS )); then
            log "no state from the worker for $unknown_readings polls (wedged, or its consumer never started); stopping it"
            if ! stop_worker; then
                release_held
                finish "$EXIT_STOP_TIMEOUT"
            fi
            release_held
            finish "$EXIT_NO_STATE"
        fi
        if (( total > 0 || ! held_known )); then
            # Work waits in the queue, or what the worker holds is unknown: never idle.
            empty_since_ms=""
        else
            empty_since_ms="${empty_since_ms:-$poll_started_ms}"
            if (( poll_started_ms < WARM_UNTIL * 1000 )); then
                # Kept warm: idle, but no idle exit before its window ends.
                empty_since_ms=""
            elif (( poll_started_ms - empty_since_ms >= IDLE_SECONDS * 1000 )); then
                log "idle for ${IDLE_SECONDS} s (held no message, nothing waiting in the queue); draining"
                drain_worker
                [[ -n "$stop_signal" ]] && handle_stop_signal
                # A worker that died meanwhile is handled (and its messages given back) above.
                worker_alive || continue
                # Work that arrived meanwhile (or that the last poll brought and gave back) keeps it.
                if read_held && (( held == 0 )) && read_total && (( total == 0 )); then
                    log "stopping the worker"
                    if ! stop_worker; then
                        release_held
                        finish "$EXIT_STOP_TIMEOUT"
                    fi
                    # A stop signal during the warm stop: the worker held nothing, say so by status.
                    [[ -n "$stop_signal" ]] && handle_stop_signal
                    finish "$EXIT_DRAINED"
                fi
                log "work arrived while draining; serving again"
                rm -f "$STOP_FILE" "$DRAINED_FILE"
                empty_since_ms=""
            fi
        fi
    else
        # An unknown count is never an empty queue, and it breaks the run of empty readings.
        empty_since_ms=""
        failed_readings=$(( failed_readings + 1 ))
        log "queue reading failed ($failed_readings of at most $MAX_FAILED_READINGS in a row)"
        if (( failed_readings >= MAX_FAILED_READINGS )); then
            log "queue unreadable for $failed_readings polls; stopping the worker"
            if ! stop_worker; then
                finish "$EXIT_STOP_TIMEOUT"
            fi
            finish "$EXIT_QUEUE_UNREADABLE"
        fi
    fi

    # Keep a steady cadence: the reading's own time counts towards the poll interval. The take
    # window's end cuts a pause short: the drain starts on time, not up to a poll late.
    elapsed_ms=$(( $(now_ms) - poll_started_ms ))
    remaining_ms=$(( POLL_SECONDS * 1000 - elapsed_ms ))
    if [[ -n "$take_until_ms" ]] && (( take_until_ms - $(now_ms) < remaining_ms )); then
        remaining_ms=$(( take_until_ms - $(now_ms) ))
    fi
    if (( remaining_ms > 0 )); then
        pause "$(printf '%d.%03d' $(( remaining_ms / 1000 )) $(( remaining_ms % 1000 )))"
    fi
done
