"""The scaling simulator: its model's conclusions and its command line."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest

from bench import scaling
from bench.scaling import Fault, Params, Simulation, Workload

SINGLE = replace(Params(), phases=(0,))   # one phase: for the tests that do not need the pooling


# Every workload but the million-task one (its own test below).
EVERYDAY = [name for name in scaling.WORKLOADS if name != "huge"]


@pytest.fixture(scope="module")
def results():
    return {(r.scenario, r.policy): r for r in scaling.run_all(EVERYDAY, scaling.POLICIES, Params())}


@pytest.fixture(scope="module")
def latency():
    return scaling.start_sweep(Params())


def _workers_at(result, seconds):
    """Workers alive at ``seconds`` on the result's (phase 0) timeline."""
    alive = 0
    for at, _, workers in result.timeline:
        if at > seconds:
            break
        alive = workers
    return alive


def _run(workload, policy="scaler", params=SINGLE):
    return Simulation(policy, workload, params).run()


# --- the model's conclusions (each would fail if the modelled behaviour regressed)

def test_seed_strands_a_backlog_below_its_low_alarm(results):
    seed = results["burst-4", "seed"]

    assert (seed.stranded, seed.drain_seconds, seed.jobs_submitted) == (4, None, 0)


def test_the_scaler_strands_nothing(results):
    for scenario in EVERYDAY:
        assert results[scenario, "scaler"].stranded == 0, scenario


def test_the_alarms_mode_sla_rule_serves_what_the_depth_rules_never_see(results):
    alarms = results["burst-4", "alarms"]

    assert alarms.stranded == 0
    # A visible message in each of 5 consecutive one-minute readings, seen a minute late, then a start.
    assert alarms.p95_wait_seconds > Params().sla_seconds


@pytest.mark.parametrize("scenario", EVERYDAY)
def test_oracle_is_a_lower_bound_for_drain_and_waits(results, scenario):
    oracle = results[scenario, "oracle"]
    for policy in ("seed", "alarms", "scaler"):
        other = results[scenario, policy]
        if other.drain_seconds is not None:
            assert oracle.drain_seconds <= other.drain_seconds, policy
        if other.p95_wait_seconds is not None:
            assert oracle.p95_wait_seconds <= other.p95_wait_seconds, policy
            assert oracle.p50_wait_seconds <= other.p50_wait_seconds, policy


def test_every_task_runs_to_completion_once_in_the_busy_floor(results):
    for (scenario, policy), result in results.items():
        if result.stranded:
            continue
        workload = scaling.WORKLOADS[scenario]
        # Pooled seeds: the row's busy time is their mean.
        busy = [sum(d for _, d in workload.arrivals(random.Random(Params().seed + k))) for k in range(workload.seeds)]
        assert result.busy_seconds == pytest.approx(sum(busy) / len(busy), abs=0.1), (scenario, policy)
        assert result.worker_seconds >= result.busy_seconds, (scenario, policy)


def test_no_policy_runs_more_workers_than_the_compute_environment_holds(results):
    for result in results.values():
        assert result.peak_workers <= Params().max_workers


def test_the_per_worker_idle_rule_ends_the_burst_fleet_beside_the_background_task(results):
    scaler = results["burst+background", "scaler"]
    # The burst is drained after about 11 minutes; one background task a minute needs one worker.
    assert _workers_at(scaler, 20 * 60) <= 2
    assert _workers_at(scaler, 3 * 3600) <= 2
    # A queue-wide idle rule (any in-flight message keeps every worker) holds all 48 for 4 hours.
    queue_wide = scaling.simulate("burst+background", "scaler", replace(SINGLE, idle_rule="queue"))
    assert _workers_at(queue_wide, 3 * 3600) == 48
    assert queue_wide.worker_seconds > 10 * scaler.worker_seconds


def test_a_crash_costs_one_task_and_recovers_within_the_visibility_window(results):
    crash, calm = results["crash", "scaler"], results["burst-1000x30s", "scaler"]

    assert crash.reruns == 1
    # The kill came 15 s into a 30 s task: no heartbeat yet, so visible again 300 - 15 s later.
    assert crash.recovery_seconds == Params().visibility_timeout_seconds - scaling.TASK_SECONDS / 2
    # The other workers are not held by the orphaned message.
    assert crash.worker_seconds <= 1.01 * calm.worker_seconds


def test_a_killed_jobs_message_returns_one_window_after_its_last_heartbeat():
    # One 900 s task; its job is killed 250 s in. Heartbeats (every 100 s with a 300 s window) ran
    # at 100 and 200 s, so the message is visible at 200 + 300 = 500 s into the task.
    workload = Workload("one long task", lambda rng: [(0.0, 900.0)], (Fault("kill", 1, at_done=0, delay=0),))
    params = SINGLE
    simulation = Simulation("scaler", workload, params)
    simulation.faults = []  # fired by hand below, 250 s into the task
    simulation.schedule(params.start_seconds + 250, scaling.FAULT, Fault("kill", 1))

    result = simulation.run()

    # Visible 250 s after the kill (t = 545 s); with no worker left, the scaler's next decision
    # (every 10 s from t = 0: 550 s) submits one, which starts 45 s later.
    assert result.recovery_seconds == 250 + 5 + params.start_seconds
    assert result.reruns == 1 and result.drain_seconds is not None


def test_a_stopped_task_that_cannot_finish_in_the_grace_is_given_back_at_once():
    # 200 long tasks; a quarter of the workers TERMed mid-way. Their tasks cannot finish within
    # the 20 s grace: each message is visible at once and the retried job starts a new worker.
    workload = Workload("long, reclaimed", lambda rng: [(0.0, 900.0)] * 200, (Fault("term", 0.25, delay=450),))

    result = _run(workload)

    assert result.reruns == 12
    # The task waits for a free worker: the Spot job's retry (start latency) or a worker whose own
    # task ended; never the visibility window.
    assert result.recovery_seconds <= Params().stop_grace_seconds + Params().start_seconds
    assert result.stranded == 0 and result.drain_seconds is not None


def test_a_reclaimed_task_that_cannot_finish_in_the_grace_is_given_back_and_rerun(results):
    reclaim, calm = results["spot-reclaim", "scaler"], results["burst-1000x30s", "scaler"]

    # A quarter of 48 workers TERMed 5 s into their 30 s tasks: 25 s left > 20 s grace, so each of
    # the 12 tasks is given back at once and runs again; no task is stranded, the drain barely moves.
    assert reclaim.reruns == 12
    assert reclaim.stranded == 0
    assert reclaim.drain_seconds <= 1.1 * calm.drain_seconds


def test_a_reclaimed_worker_whose_task_fits_the_grace_finishes_it():
    # 15 s into their 30 s tasks: 15 s left, inside the 20 s grace.
    late = Workload("reclaim 15 s into the tasks", scaling._burst(1000), (Fault("term", 0.25, delay=15.0),))
    result = Simulation("scaler", late, SINGLE).run()

    assert result.reruns == 0


def test_drain_and_warm_shutdown_are_billed(results):
    oracle = results["burst-1000x30s", "oracle"].billed_by_state
    workers = Params().max_workers

    assert oracle["idle"] == workers * Params().idle_seconds
    assert oracle["draining"] == workers * scaling.LONG_POLL_SECONDS
    assert oracle["stopping"] == workers * scaling.SHUTDOWN_SECONDS


def test_counting_in_flight_messages_as_busy_workers_serves_long_tasks(results):
    # The policy decision: KEDA's ceil((visible + in flight) / mpw) gives 20 workers to 200 tasks of
    # 900 s and drains in twice the oracle's time; one worker per in-flight message reaches the cap.
    busy, oracle = results["long-200x900s", "scaler"], results["long-200x900s", "oracle"]
    keda = scaling.simulate("long-200x900s", "scaler", replace(SINGLE, in_flight_count="keda"))

    assert busy.drain_seconds <= 1.05 * oracle.drain_seconds
    assert keda.drain_seconds >= 1.9 * oracle.drain_seconds
    assert busy.worker_seconds <= 1.05 * keda.worker_seconds


def test_the_phase_is_pooled_and_matters_for_a_once_a_minute_scaler():
    once_a_minute = replace(Params(), scaler_poll_seconds=60)
    pooled = scaling.simulate("burst-4", "scaler", once_a_minute)
    single = [scaling.simulate("burst-4", "scaler", once_a_minute, phase=p).p95_wait_seconds for p in scaling.PHASES]

    assert pooled.phases == len(scaling.PHASES)
    # One phase in each 5 s of the minute, at a random point of it.
    assert all(5 * i <= p < 5 * (i + 1) for i, p in enumerate(scaling.PHASES))
    assert len(set(single)) >= 6
    assert min(single) <= pooled.p95_wait_seconds <= max(single)
    # A scaler that decides every 10 s all the time makes the phase matter far less.
    assert scaling.simulate("burst-4", "scaler", LOOP).p95_wait_seconds < pooled.p95_wait_seconds


def test_a_slower_start_delays_the_drain_by_about_the_start(latency):
    scaler = {r.start_seconds: r for r in latency if r.policy == "scaler"}
    oracle = next(r for r in latency if r.policy == "oracle")

    assert sorted(scaler) == list(scaling.START_SWEEP)
    for start, result in scaler.items():
        # The idle scaler sees the burst at its next minute's check: 27.5 s later on the phases' mean.
        assert start + oracle.drain_seconds <= result.drain_seconds <= start + oracle.drain_seconds + 27.5 + 15
    assert scaler[45].worker_seconds < scaler[90].worker_seconds < scaler[150].worker_seconds


def test_messages_per_worker_sizes_the_first_response():
    eager = scaling.simulate("burst-4", "scaler", replace(SINGLE, messages_per_worker=1))
    default = scaling.simulate("burst-4", "scaler", replace(SINGLE, messages_per_worker=10))

    assert eager.peak_workers == 4
    assert default.peak_workers < 4
    assert eager.p95_wait_seconds < default.p95_wait_seconds


def test_the_targets_are_checked_and_the_one_out_of_reach_is_named(results, latency):
    checks = scaling.targets(list(results.values()), latency, Params())

    assert len(checks) == 16
    # Out of reach, for the reasons docs/scaling.md gives: nothing reactive can start 150 s sooner
    # than it does (the oracle has no start latency: 1.24x at best). The burst's 48 workers each
    # pay a start and an idle window of 60 to 70 s once the poll no longer falls on the tasks'
    # ends (random offsets): 1.17x. few-long-warm's 75 s is two decisions of a looping scaler;
    # the idle check (one a minute) makes it 102 s, and scaler_idle_check "loop" meets it.
    assert [name for name, met, _ in checks if not met] == [
        "burst-1000x30s: worker-s <= 1.16x busy", "150 s start: drain <= 1.2x oracle",
        "few-long-warm: p95 wait <= 75 s"]
    loop = scaling.simulate("few-long-warm", "scaler", replace(Params(), scaler_idle_check="loop"))
    assert [met for _, met, _ in scaling.targets([loop], [], Params())] == [True, True]


@pytest.mark.parametrize("scenario", ["stream-2x-timeout", "long-stream"])
def test_a_backlog_longer_than_the_job_timeout_has_no_task_cut(results, scenario):
    scaler = results[scenario, "scaler"]
    # The workers left at their take window and were replaced: no rerun, every task done once.
    assert (scaler.reruns, scaler.timeout_cuts, scaler.stranded) == (0, 0, 0)
    assert scaler.deadline_exits >= 2
    # The script before the take window: Batch's timeout cut a task in hand, which ran again.
    before = scaling.simulate(scenario, "scaler", replace(SINGLE, deadline_rule=False))
    assert before.timeout_cuts >= 1 and before.reruns >= before.timeout_cuts


def test_leaving_at_the_take_window_costs_about_what_the_timeout_did(results):
    # A replacement's start instead of a cut task run again: worker-seconds within 2 %.
    for scenario in ("stream-2x-timeout", "long-stream"):
        now = results[scenario, "scaler"]
        before = scaling.simulate(scenario, "scaler", replace(Params(), deadline_rule=False))
        assert now.worker_seconds <= 1.02 * before.worker_seconds, scenario


def test_every_workload_runs_on_the_shipped_defaults_or_names_what_it_changes(results):
    for scenario in EVERYDAY:
        workload = scaling.WORKLOADS[scenario]
        assert results[scenario, "scaler"].settings == workload.settings_text()
        if not workload.settings:
            assert workload.settings_text() == "defaults"
    # A 2-hour task runs on the shipped defaults (below the soft time limit of the default limit).
    assert results["long-stream", "scaler"].settings == "defaults"


def test_rejects_a_workload_whose_tasks_exceed_the_task_time_limit():
    too_long = Workload("one 2 h task", lambda rng: [(0.0, 7200.0)])
    with pytest.raises(ValueError, match="stopped at its soft time limit"):
        Simulation("scaler", too_long, replace(SINGLE, task_time_limit_seconds=900))
    named = Workload("one 2 h task, limit raised", lambda rng: [(0.0, 7200.0)],
                     settings=(("task_time_limit_seconds", 7300),))
    assert Simulation("scaler", named, replace(SINGLE, task_time_limit_seconds=900)).run().reruns == 0


def test_is_deterministic():
    first = [r.row() for r in scaling.run_all(["ramp"], scaling.POLICIES, SINGLE)]
    second = [r.row() for r in scaling.run_all(["ramp"], scaling.POLICIES, SINGLE)]

    assert first == second


def test_the_scaler_loop_matches_the_stack():
    from batch_celery import scaling as stack_scaling
    from batch_celery.props import CeleryBatchWorkersProps

    assert scaling.SCALER_LOOP_SECONDS == stack_scaling.SCALER_LOOP_SECONDS
    assert scaling.SCALER_COOLDOWN_SECONDS == stack_scaling.SCALER_COOLDOWN_SECONDS
    assert Params().scaler_idle_check == CeleryBatchWorkersProps().scaler_idle_check == "minute"


# --- the idle check (a run with no work to watch makes one decision and ends)

LOOP = replace(Params(), scaler_idle_check="loop")


@pytest.mark.parametrize("phase", [0, 5, 25, 55])
def test_an_idle_scaler_sees_a_first_message_at_its_next_minute(phase):
    # The first decision after t = 0: at the phase (the next run) instead of the next 10 s slot.
    one = replace(SINGLE, phases=(phase,))
    minute = scaling.simulate("burst-1000x30s", "scaler", one)
    loop = scaling.simulate("burst-1000x30s", "scaler", replace(one, scaler_idle_check="loop"))

    assert minute.drain_seconds - loop.drain_seconds == phase - phase % 10


def test_the_idle_check_costs_a_first_message_about_25_s_on_average(results):
    # Over the phases, the first decision comes 27.5 s after the burst instead of 2.5 s: the
    # drain grows by 25 s, burst-4's waits by 25 to 50 s, and the workers cost the same.
    for scenario in ("burst-1000x30s", "burst-4"):
        minute, loop = results[scenario, "scaler"], scaling.simulate(scenario, "scaler", LOOP)
        assert minute.drain_seconds - loop.drain_seconds == pytest.approx(25, abs=2)
        assert minute.worker_seconds == pytest.approx(loop.worker_seconds, rel=0.01)
    minute, loop = results["burst-4", "scaler"], scaling.simulate("burst-4", "scaler", LOOP)
    assert 25 <= minute.p95_wait_seconds - loop.p95_wait_seconds <= 50


def test_the_cool_down_keeps_a_trickle_served_as_by_the_loop(results):
    minute, loop = results["trickle", "scaler"], scaling.simulate("trickle", "scaler", LOOP)
    # Job statuses read late keep the scaler looping a while after a worker left: none here.
    no_cool_down = scaling.simulate("trickle", "scaler", replace(Params(), scaler_cooldown_seconds=0,
                                                                  listjobs_lag_seconds=0))

    # A task every 2 minutes: with the cool-down the scaler never goes quiet between them.
    assert minute.p95_wait_seconds == pytest.approx(loop.p95_wait_seconds, abs=1)
    assert abs(minute.worker_seconds - loop.worker_seconds) <= 0.01 * loop.worker_seconds
    # Without it, each task after a worker left waits for the next minute's check.
    assert no_cool_down.p95_wait_seconds >= loop.p95_wait_seconds + 30


# --- the command line

def test_json_rows_carry_the_documented_keys(capsys):
    assert scaling.main(["--json", "--scenario", "burst-4", "--scenario", "crash"]) == 0

    rows = json.loads(capsys.readouterr().out)
    # The Lambda policy runs no workload with faults (crash).
    assert len(rows) == 2 * len(scaling.POLICIES) - 1
    for row in rows:
        assert {"scenario", "policy", "drain_seconds", "p50_wait_seconds", "p95_wait_seconds", "worker_seconds",
                "busy_seconds", "peak_workers", "jobs_submitted", "stranded", "phases", "start_seconds"} <= row.keys()


@pytest.mark.slow  # every workload, the million-task one too
def test_table_names_every_scenario_and_prints_each_target(capsys):
    assert scaling.main(["--phase", "0"]) == 0

    out = capsys.readouterr().out
    for scenario in scaling.WORKLOADS:
        assert scenario in out
    assert "Start-latency sweep" in out
    assert out.count("met  ") + out.count("NOT MET") == 17


def test_plot_writes_a_png(tmp_path):
    path = tmp_path / "burst.png"

    assert scaling.main(["--scenario", "burst-4", "--policy", "scaler", "--plot", str(path)]) == 0

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--messages-per-worker", "0"], "--messages-per-worker must be a whole number >= 1, got '0'"),
        (["--start-seconds", "5"], "--start-seconds must be a whole number >= 10, got '5'"),
        (["--phase", "60"], "argument --phase: invalid choice: 60"),
    ],
)
def test_rejects_invalid_arguments(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        scaling.main(argv)

    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow  # a million tasks: half a minute
def test_a_million_tasks_drain_near_the_oracle_within_the_batch_quota():
    scaler, oracle = (scaling.simulate("huge", policy) for policy in ("scaler", "oracle"))
    within, figures = scaling.api_check(scaler, Params())

    assert scaler.drain_seconds <= 1.15 * oracle.drain_seconds
    assert scaler.peak_workers == scaling.HUGE_MAX_WORKERS
    # One array job of 2,000: a SubmitJob call, not 2,000 of them.
    assert (scaler.api["submit_calls_max"], scaler.api["array_max"]) == (1, 2000)
    assert within, figures
    # What would not fit: a decision whose calls take longer than the poll (thousands of parents).
    crowded = replace(scaler, api={**scaler.api, "batch_calls_max": 400})
    assert not scaling.api_check(crowded, Params())[0]
    assert not scaling.api_check(replace(scaler, api={**scaler.api, "array_max": 10_001}), Params())[0]


@pytest.mark.parametrize("scenario", ["burst-4", "trickle"])
def test_a_lambda_pool_starts_light_tasks_in_seconds_and_bills_their_run(results, scenario):
    on_lambda, on_fargate = results[scenario, "lambda"], results[scenario, "scaler"]

    assert on_lambda.p95_wait_seconds <= 5 < on_fargate.p95_wait_seconds
    assert on_lambda.worker_seconds <= 1.2 * on_lambda.busy_seconds


def test_learned_run_times_stop_a_worker_a_busy_one_beats(results):
    # A working day of 45 s tasks: a waiting task that a busy worker starts within the target gets
    # no new worker. The fixed ratio (the override) starts more, for longer waits.
    learned, fixed = results["diurnal", "scaler"], scaling.simulate("diurnal", "scaler",
                                                                   replace(Params(), messages_per_worker=10))
    assert learned.worker_seconds / learned.busy_seconds <= 1.4 < fixed.worker_seconds / fixed.busy_seconds
    assert learned.p95_wait_seconds <= 90 <= fixed.p95_wait_seconds


def test_a_pool_that_never_ran_its_long_tasks_starts_a_worker_for_each(results):
    cold = results["few-long", "scaler"]

    assert cold.jobs_submitted == 20 and cold.p95_wait_seconds <= 150


def test_a_warm_worker_serves_a_trickle_at_once_for_its_whole_time(results):
    warm, cold = results["trickle-warm", "scaler"], results["trickle", "scaler"]

    assert (warm.p95_wait_seconds, warm.jobs_submitted) == (0, 0)
    # One worker up from the first task to the last: the hour, against the cold pool's starts and
    # idle windows per task.
    assert warm.worker_seconds == pytest.approx(3510, abs=1)
    assert warm.worker_seconds <= 1.2 * cold.worker_seconds
