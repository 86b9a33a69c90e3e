"""The real lifecycle script with real Celery workers against moto server: drain, stop, survive faults.

Timings are short through the environment (IDLE 3 s, POLL 1 s, visibility timeouts of seconds);
the bounds asserted are generous because the machine is small and shared.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from batch_celery_local.queues import message_counts, total_messages
from harness.faults import FaultProxy
from harness.lifecycle import fill, running_script, wait_until, worker_env
from harness.processes import alive

pytestmark = pytest.mark.slow

IDLE, POLL = 3, 1
# Worker start, its warm shutdown (about 3 s here) and a loaded machine.
MARGIN = 15


def _runs_once_more_to_completion(env, tmp_path) -> None:
    """A second worker runs the one task that was cut short: started twice in all, done once."""
    with running_script(env, tmp_path / "second.log") as second:
        assert second.wait(timeout=120) == 0, second.output[-3000:]
    events = second.events()
    assert list(events["start"].values()) == [2]
    assert list(events["done"].values()) == [1]


def _seconds_until_visible(sqs, queues, since: float, timeout: float) -> float:
    """Seconds from ``since`` until the one task is visible in the queue again."""
    wait_until(lambda: message_counts(sqs, queues.url)[0] == 1, timeout=timeout, what="the task to be visible again")
    return time.monotonic() - since


def test_drains_queue_and_exits_after_idle(moto_server, sqs, make_queues, tmp_path):
    queues = make_queues(visibility_timeout=30)
    env = worker_env(moto_server, queues, tmp_path)
    fill(env, 20, "probe.record", args=["drain"])
    fill(env, 2, "batch.calculate_pi", args=[20000])

    with running_script(env, tmp_path / "out.log") as run:
        wait_until(lambda: total_messages(sqs, queues.url) == 0, timeout=120, what="the queue to drain")
        empty_at = time.monotonic()
        status = run.wait(timeout=IDLE + POLL + MARGIN + 30)
        tail = time.monotonic() - empty_at

    assert status == 0, run.output[-3000:]
    done = run.events().get("done", {})
    assert len(done) == 20 and set(done.values()) == {1}, done
    # calculate_pi's value reaches the log (and so CloudWatch) without a result backend.
    assert run.output.count("succeeded in") == 22
    assert "3.1415" in run.output
    assert tail <= IDLE + POLL + MARGIN, f"exited {tail:.1f} s after the queue became empty"


def test_a_warm_worker_stays_idle_until_its_window_ends_then_leaves_by_the_idle_rule(moto_server, make_queues,
                                                                                     tmp_path):
    queues = make_queues(visibility_timeout=30)
    warm_for = IDLE + 2 * POLL + 5
    env = worker_env(moto_server, queues, tmp_path, WARM_UNTIL=str(int(time.time()) + warm_for))

    with running_script(env, tmp_path / "out.log") as run:
        started = time.monotonic()
        status = run.wait(timeout=warm_for + IDLE + POLL + MARGIN + 30)
        lived = time.monotonic() - started

    assert status == 0, run.output[-3000:]
    assert "kept warm (a pool's min_workers): no idle exit before" in run.output
    # Nothing to do at any time: without WARM_UNTIL it would have left after IDLE + POLL.
    assert warm_for <= lived <= warm_for + IDLE + POLL + MARGIN, f"left after {lived:.1f} s"


def test_keeps_worker_while_task_in_flight(moto_server, sqs, make_queues, tmp_path):
    queues = make_queues(visibility_timeout=30)
    env = worker_env(moto_server, queues, tmp_path)
    fill(env, 1, "probe.record", args=["long", 10])

    with running_script(env, tmp_path / "out.log") as run:
        wait_until(lambda: run.events().get("start"), timeout=60, what="the task to start")
        # Well past IDLE + POLL with nothing visible: only the in-flight count holds the worker.
        time.sleep(IDLE + 2 * POLL + 1)
        assert message_counts(sqs, queues.url)[:2] == (0, 1)
        assert run.process.poll() is None
        assert "sending TERM" not in run.output
        status = run.wait(timeout=60)

    assert status == 0, run.output[-3000:]
    assert list(run.events()["done"].values()) == [1]


def test_term_during_task_finishes_it_and_keeps_the_rest(moto_server, sqs, make_queues, tmp_path):
    queues = make_queues(visibility_timeout=30)
    env = worker_env(moto_server, queues, tmp_path)
    fill(env, 3, "probe.record", args=["term", 4])

    with running_script(env, tmp_path / "first.log") as run:
        wait_until(lambda: run.events().get("start"), timeout=60, what="the first task to start")
        run.signal(signal.SIGTERM)
        status = run.wait(timeout=60)
    assert status == 143, run.output[-3000:]
    # Warm shutdown: the running task finished and was acked; the others never left the queue.
    assert list(run.events()["done"].values()) == [1]
    assert message_counts(sqs, queues.url) == (2, 0, 0)

    with running_script(env, tmp_path / "second.log") as second:
        assert second.wait(timeout=120) == 0, second.output[-3000:]
    done = second.events()["done"]
    assert len(done) == 3 and set(done.values()) == {1}, done


def test_worker_killed_mid_task_exits_nonzero_and_gives_its_task_back_at_once(moto_server, sqs, make_queues, tmp_path):
    queues = make_queues(visibility_timeout=60)
    env = worker_env(moto_server, queues, tmp_path)
    fill(env, 1, "probe.record", args=["killed", 3])

    with running_script(env, tmp_path / "first.log") as run:
        worker_pid = run.worker_pid()
        wait_until(lambda: run.events().get("start"), timeout=60, what="the task to start")
        # The whole worker (main process and pool), as an OOM kill or a crash would.
        os.killpg(os.getpgid(worker_pid), signal.SIGKILL)
        status = run.wait(timeout=30)
        # Visible again long before the 60 s visibility timeout: the script gave it back.
        visible_after = _seconds_until_visible(sqs, queues, since=time.monotonic(), timeout=5)
    assert status == 3, run.output[-3000:]
    assert "done" not in run.events()
    assert "released 1 held message(s) at once" in run.output
    print(f"killed worker: task visible again {visible_after:.1f} s after the script exited")

    _runs_once_more_to_completion(env, tmp_path)


def test_container_killed_mid_task_runs_again_within_visibility_window(moto_server, sqs, make_queues, tmp_path):
    queues = make_queues(visibility_timeout=6)
    env = worker_env(moto_server, queues, tmp_path, TASK_TIME_LIMIT_SECONDS=60, HEARTBEAT_SECONDS=2)
    fill(env, 1, "probe.record", args=["container", 10])

    with running_script(env, tmp_path / "first.log") as run:
        wait_until(lambda: run.events().get("start"), timeout=60, what="the task to start")
        time.sleep(7)  # past one window: only the heartbeat kept it hidden until now
        assert message_counts(sqs, queues.url)[:2] == (0, 1)
        run.kill_everything()  # script and worker at once: nobody is left to give it back
        returned_after = _seconds_until_visible(sqs, queues, since=time.monotonic(), timeout=6 + 5)
    assert "done" not in run.events()
    print(f"killed container: task visible again {returned_after:.1f} s after the kill (window 6 s)")

    _runs_once_more_to_completion(env, tmp_path)


def test_term_gives_task_back_when_it_cannot_finish_within_grace(moto_server, sqs, make_queues, tmp_path):
    queues = make_queues(visibility_timeout=60)
    env = worker_env(moto_server, queues, tmp_path, STOP_GRACE_SECONDS=3, TASK_TIME_LIMIT_SECONDS=120)
    fill(env, 1, "probe.record", args=["grace", 8])

    with running_script(env, tmp_path / "first.log") as run:
        wait_until(lambda: run.events().get("start"), timeout=60, what="the task to start")
        run.signal(signal.SIGTERM)
        status = run.wait(timeout=3 + MARGIN)
        visible_after = _seconds_until_visible(sqs, queues, since=time.monotonic(), timeout=5)
    assert status == 143, run.output[-3000:]
    assert "did not finish within 3 s" in run.output
    assert "done" not in run.events()
    print(f"TERM past the grace: task visible {visible_after:.1f} s after the script exited")

    _runs_once_more_to_completion(env, tmp_path)


def test_endpoint_outage_does_not_stop_worker(moto_server, sqs, make_queues, tmp_path):
    queues = make_queues(visibility_timeout=10)
    with FaultProxy(moto_server.port) as proxy:
        env = worker_env(moto_server, queues, tmp_path, endpoint=proxy.endpoint, MAX_FAILED_READINGS=100)
        fill(env, 4, "probe.record", args=["outage", 2])
        with running_script(env, tmp_path / "out.log") as run:
            worker_pid = run.worker_pid()
            wait_until(lambda: run.events().get("start"), timeout=60, what="the first task to start")
            with proxy.outage():
                # Longer than IDLE + POLL: failed readings must not count as an empty queue,
                # and kombu 5.7.0's stock transport would die here ("'list' object has no
                # attribute 'get'"), which sqs_transport/endpoint_outage.py prevents.
                time.sleep(IDLE + 4 * POLL + 2)
                assert run.process.poll() is None, run.output[-3000:]
                assert "sending TERM" not in run.output
                assert alive(worker_pid)
            status = run.wait(timeout=120)

    assert status == 0, run.output[-3000:]
    assert "queue reading failed" in run.output
    assert "Unrecoverable error" not in run.output
    done = run.events()["done"]
    # None lost. An ack that fell into the outage is redelivered, so a task may run twice.
    assert len(done) == 4, done
    print(f"outage: runs per task {sorted(done.values())}")
    assert total_messages(sqs, queues.url) == 0


def test_unreadable_queue_ends_run_with_its_own_status(moto_server, make_queues, tmp_path):
    queues = make_queues(visibility_timeout=10)
    with FaultProxy(moto_server.port) as proxy:
        env = worker_env(moto_server, queues, tmp_path, endpoint=proxy.endpoint, MAX_FAILED_READINGS=3)
        with running_script(env, tmp_path / "out.log") as run:
            run.worker_pid()
            proxy.go_down()
            status = run.wait(timeout=90)
    assert status == 4, run.output[-3000:]
    assert "queue unreadable for 3 polls" in run.output


def test_failing_task_ends_in_dead_letter_queue(moto_server, sqs, make_queues, tmp_path):
    queues = make_queues(visibility_timeout=6, max_receive_count=2)
    # A failed task waits min(30 s x receives, 6 s) invisible, held by nobody: a worker idle for
    # less than that leaves (the scaler starts one when it is visible). This one waits for it.
    env = worker_env(moto_server, queues, tmp_path, IDLE_SECONDS=10)
    fill(env, 1, "probe.fail", args=["poison"])
    fill(env, 2, "probe.record", args=["healthy"])

    with running_script(env, tmp_path / "out.log") as run:
        status = run.wait(timeout=120)

    assert status == 0, run.output[-3000:]
    events = run.events()
    assert list(events["fail"].values()) == [2]  # received maxReceiveCount times, never acked
    assert len(events["done"]) == 2
    assert message_counts(sqs, queues.dlq_url)[0] == 1


def test_refuses_queue_without_dead_letter_queue(moto_server, sqs, make_queues, tmp_path):
    queues = make_queues(visibility_timeout=10)
    sqs.set_queue_attributes(QueueUrl=queues.url, Attributes={"RedrivePolicy": ""})
    assert "RedrivePolicy" not in sqs.get_queue_attributes(QueueUrl=queues.url, AttributeNames=["All"])["Attributes"]
    env = worker_env(moto_server, queues, tmp_path, START_TIMEOUT_SECONDS=20)
    with running_script(env, tmp_path / "out.log") as run:
        status = run.wait(timeout=60)
    assert status == 2, run.output[-3000:]
    assert "has no redrive policy" in run.output
    assert "starting Celery worker" not in run.output


def test_rejects_time_limit_beyond_sqs_hold_limit(moto_server, make_queues, tmp_path):
    queues = make_queues(visibility_timeout=10)
    env = worker_env(moto_server, queues, tmp_path, TASK_TIME_LIMIT_SECONDS=43195)
    with running_script(env, tmp_path / "out.log") as run:
        status = run.wait(timeout=30)
    assert status == 2
    assert "TASK_TIME_LIMIT_SECONDS=43195 is not allowed; allowed: 1..43190 seconds" in run.output
    assert "starting Celery worker" not in run.output
    assert "Traceback" not in run.output


@pytest.mark.parametrize("name, value", [("IDLE_SECONDS", "0"), ("POLL_SECONDS", "soon"), ("WARM_UNTIL", "soon")])
def test_rejects_bad_timing(moto_server, make_queues, tmp_path, name, value):
    queues = make_queues()
    env = worker_env(moto_server, queues, tmp_path, **{name: value})
    with running_script(env, tmp_path / "out.log") as run:
        assert run.wait(timeout=30) == 2
    assert f"{name}={value} is not allowed" in run.output


# --- a worker holds a message only while it works on it ----------------------------------------


def test_heartbeat_keeps_task_longer_than_visibility_timeout_single(moto_server, sqs, make_queues, tmp_path):
    queues = make_queues(visibility_timeout=6)
    # A second worker polls the whole time: without the heartbeat it would receive the message
    # 6 s after the first one did and run the task a second time.
    env = worker_env(moto_server, queues, tmp_path, TASK_TIME_LIMIT_SECONDS=60, HEARTBEAT_SECONDS=2)
    fill(env, 1, "probe.record", args=["long", 20])

    with running_script(env, tmp_path / "first.log") as first:
        wait_until(lambda: first.events().get("start"), timeout=60, what="the task to start")
        second_env = dict(env, WORKER_RUN_DIR=str(tmp_path / "second-worker"))
        with running_script(second_env, tmp_path / "second.log") as second:
            assert second.wait(timeout=IDLE + POLL + MARGIN + 15) == 0, second.output[-3000:]
            # The idle worker left while the other still ran the long task.
            assert first.process.poll() is None
            assert "done" not in first.events()
        assert first.wait(timeout=60) == 0, first.output[-3000:]

    events = first.events()
    assert list(events["start"].values()) == [1], events
    assert list(events["done"].values()) == [1], events
    assert total_messages(sqs, queues.url) == 0


@pytest.mark.parametrize("countdown", [3, 18])
def test_countdown_runs_once_at_its_time_whatever_the_visibility_timeout(moto_server, sqs, make_queues, tmp_path, countdown):
    queues = make_queues(visibility_timeout=6)
    env = worker_env(moto_server, queues, tmp_path, TASK_TIME_LIMIT_SECONDS=30, HEARTBEAT_SECONDS=2)
    sent_at = time.time()
    fill(env, 1, "probe.record", args=["later", 0.5], countdown=countdown)

    # Two workers: the one holding the future task stays (it holds a message); the other must not
    # receive it a second time when the 6 s window passes.
    second_env = dict(env, WORKER_RUN_DIR=str(tmp_path / "second-worker"))
    with running_script(env, tmp_path / "first.log") as first, running_script(second_env, tmp_path / "second.log") as second:
        assert first.wait(timeout=countdown + 60) == 0, first.output[-3000:]
        assert second.wait(timeout=60) == 0, second.output[-3000:]

    events = first.events()  # both workers record to the same file
    assert list(events["start"].values()) == [1], events
    assert list(events["done"].values()) == [1], events
    finished_at = Path(env["PROBE_RECORD_FILE"]).stat().st_mtime
    assert finished_at - sent_at >= countdown, "ran before its countdown"


def test_countdown_beyond_sqs_hold_limit_goes_to_dead_letter_queue_with_reason(moto_server, sqs, make_queues, tmp_path):
    queues = make_queues(visibility_timeout=60)
    env = worker_env(moto_server, queues, tmp_path)
    fill(env, 1, "probe.record", args=["too-far"], countdown=13 * 3600)
    fill(env, 1, "probe.record", args=["now"])

    with running_script(env, tmp_path / "out.log") as run:
        assert run.wait(timeout=60) == 0, run.output[-3000:]

    assert list(run.events()["done"].values()) == [1]  # the other task ran; the far one did not
    letters = sqs.receive_message(QueueUrl=queues.dlq_url, MessageAttributeNames=["All"], WaitTimeSeconds=1)["Messages"]
    assert len(letters) == 1
    reason = letters[0]["MessageAttributes"]["batch_celery_reason"]["StringValue"]
    assert "ahead; at most" in reason, reason
    assert total_messages(sqs, queues.url) == 0


def test_failing_task_with_celery_retries_runs_max_retries_plus_one_then_dead_letter(moto_server, sqs, make_queues, tmp_path):
    queues = make_queues(visibility_timeout=10, max_receive_count=3)
    env = worker_env(moto_server, queues, tmp_path)
    fill(env, 1, "probe.retry", args=["retry"])

    with running_script(env, tmp_path / "out.log") as run:
        assert run.wait(timeout=90) == 0, run.output[-3000:]

    # max_retries=2: three runs by Celery, none more by SQS redelivery (before: 3 + 2 = 5).
    assert sum(run.events()["fail"].values()) == 3, run.events()
    letters = sqs.receive_message(QueueUrl=queues.dlq_url, MessageAttributeNames=["All"], WaitTimeSeconds=1)["Messages"]
    assert len(letters) == 1
    assert letters[0]["MessageAttributes"]["batch_celery_reason"]["StringValue"] == "failed after 2 Celery retries (max_retries 2)"


def test_message_taken_by_the_last_long_poll_of_a_stopping_worker_is_given_back(moto_server, sqs, make_queues, tmp_path):
    # The worker drains: no new long poll, and what the open one brings goes back at once (a poll
    # left open by an exiting worker would hide the message for the whole window, 60 s here).
    # Sent while held.json says "draining, one poll open"; up to 5 tries to hit that open poll.
    queues = make_queues(visibility_timeout=60)
    # A real task message, prepared beforehand so that sending it takes one fast SQS call.
    scratch = make_queues(visibility_timeout=60)
    fill(worker_env(moto_server, scratch, tmp_path), 1, "probe.record", args=["late", 0.1])
    [prepared] = sqs.receive_message(QueueUrl=scratch.url)["Messages"]
    for attempt in range(5):
        run_dir = tmp_path / f"try-{attempt}"
        run_dir.mkdir()
        env = worker_env(moto_server, queues, run_dir, TASK_TIME_LIMIT_SECONDS=30)
        state_file = Path(env["WORKER_RUN_DIR"]) / "held.json"

        def draining_with_a_poll_open():
            try:
                state = json.loads(state_file.read_text())
            except (OSError, ValueError):
                return False
            return state["draining"] and state["open_polls"] == 1

        with running_script(env, run_dir / "out.log") as run:
            wait_until(draining_with_a_poll_open, timeout=60, interval=0.02, what="the drain with a poll open")
            sqs.send_message(QueueUrl=queues.url, MessageBody=prepared["Body"])
            assert run.wait(timeout=60) == 0, run.output[-3000:]
        if "that the last long poll brought" in run.output:
            break
    else:
        pytest.fail("in 5 tries the stopping worker's open long poll never brought the message")
    # Given back at once, so the worker saw it visible, served again and ran it, once.
    assert "work arrived while draining; serving again" in run.output, run.output[-3000:]
    assert list(run.events()["done"].values()) == [1]
    assert total_messages(sqs, queues.url) == 0


# --- the job's deadline: the worker leaves before Batch's timeout would cut a task --------------


def _deadline_env(moto_server, queues, tmp_path, **overrides):
    """A 30 s job timeout, 10 s task limit, 3 s grace; margins of 2 s (start) and 5 s (stop), so
    the worker may take tasks for 30 - 2 - 10 - 3 - 5 = 10 s after the script's start."""
    settings = dict(JOB_TIMEOUT_SECONDS=30, TASK_TIME_LIMIT_SECONDS=10, STOP_GRACE_SECONDS=3,
                    JOB_START_MARGIN_SECONDS=2, JOB_STOP_MARGIN_SECONDS=5)
    return worker_env(moto_server, queues, tmp_path, **{**settings, **overrides})


def test_leaves_before_its_job_deadline_with_every_started_task_finished(moto_server, sqs, make_queues, tmp_path):
    queues = make_queues(visibility_timeout=30)
    env = _deadline_env(moto_server, queues, tmp_path)
    # More 4 s tasks than 10 s of taking (and 30 s in all) can finish.
    fill(env, 12, "probe.record", args=["deadline", 4])

    started = time.monotonic()
    with running_script(env, tmp_path / "out.log") as run:
        status = run.wait(timeout=60)
        left_after = time.monotonic() - started

    assert status == 7, run.output[-3000:]
    assert left_after < 30, f"left {left_after:.1f} s after its start, past the 30 s job timeout"
    assert "job deadline: a task taken now could not finish" in run.output
    events = run.events()
    started_ids, done_ids = events.get("start", {}), events.get("done", {})
    # Every task it started, it finished, once; it did not just leave without working.
    assert started_ids and started_ids == done_ids, events
    assert set(done_ids.values()) == {1}, events
    done = len(done_ids)
    # Nothing held back: the rest wait visible, none in flight for a visibility timeout.
    assert message_counts(sqs, queues.url) == (12 - done, 0, 0)
    print(f"deadline worker: exit 7 after {left_after:.1f} s (job timeout 30 s, take window 10 s), "
          f"{done} tasks of 4 s started and finished, {12 - done} left visible")

    # A worker with no deadline runs the rest: every task ran exactly once in all.
    with running_script(dict(env, JOB_TIMEOUT_SECONDS=""), tmp_path / "second.log") as second:
        assert second.wait(timeout=120) == 0, second.output[-3000:]
    events = second.events()  # both workers record to the same file
    assert len(events["start"]) == 12 and set(events["start"].values()) == {1}, events
    assert events["done"] == events["start"], events
    assert total_messages(sqs, queues.url) == 0


def test_rejects_a_job_timeout_that_leaves_no_time_to_take_tasks(moto_server, make_queues, tmp_path):
    queues = make_queues(visibility_timeout=30)
    env = _deadline_env(moto_server, queues, tmp_path, JOB_TIMEOUT_SECONDS=20)
    with running_script(env, tmp_path / "out.log") as run:
        assert run.wait(timeout=30) == 2
    assert "JOB_TIMEOUT_SECONDS=20 is not allowed; must be >= 23" in run.output
    assert "starting Celery worker" not in run.output


# --- TERM is acted on in every wait ------------------------------------------------------------


def _wait_for_output(run, text: str, timeout: float = 60) -> None:
    wait_until(lambda: text in run.output, timeout=timeout, interval=0.1, what=repr(text))


def _term_and_time(run, timeout: float) -> tuple[int, float]:
    signalled = time.monotonic()
    run.signal(signal.SIGTERM)
    status = run.wait(timeout=timeout)
    return status, time.monotonic() - signalled


def test_term_during_the_start_checks_exits_before_starting_a_worker(moto_server, make_queues, tmp_path):
    from harness.faults import ApiProxy

    queues = make_queues(visibility_timeout=30)
    # The dead-letter check hangs (each GetQueueAttributes answered after 30 s; the helper gives up
    # after about 10 s): a TERM then must not wait for it, nor start a worker afterwards.
    import threading

    checking = threading.Event()

    def slow(action):
        if action == "GetQueueAttributes":
            checking.set()
            time.sleep(30)

    with ApiProxy(moto_server.endpoint, decide=slow) as proxy:
        env = worker_env(moto_server, queues, tmp_path, endpoint=proxy.endpoint)
        with running_script(env, tmp_path / "out.log") as run:
            assert checking.wait(timeout=30), run.output[-3000:]
            status, took = _term_and_time(run, timeout=30)
    assert status == 143, run.output[-3000:]
    assert took < 3, f"exited {took:.1f} s after TERM"
    assert "received SIGTERM before the worker started" in run.output
    assert "starting Celery worker" not in run.output


@pytest.mark.parametrize("path", ["no state", "unreadable queue"])
def test_term_during_a_stop_that_does_not_end_is_acted_on_at_once(moto_server, make_queues, tmp_path, path):
    # The worker is frozen (SIGSTOP): its state goes stale, the script decides to stop it (exit 6,
    # or exit 4 with the queue unreachable too) and waits for a warm stop that never comes (up to
    # STOP_TIMEOUT_SECONDS, 10 minutes here). Batch's TERM must end that wait within the grace.
    queues = make_queues(visibility_timeout=30)
    with FaultProxy(moto_server.port) as proxy:
        env = worker_env(moto_server, queues, tmp_path, endpoint=proxy.endpoint, MAX_FAILED_READINGS=2,
                         STOP_TIMEOUT_SECONDS=600, STOP_GRACE_SECONDS=3)
        with running_script(env, tmp_path / "out.log") as run:
            worker_pid = run.worker_pid()
            _wait_for_output(run, "worker {} running".format(worker_pid))
            if path == "unreadable queue":
                proxy.go_down()
            os.kill(worker_pid, signal.SIGSTOP)
            _wait_for_output(run, "(warm shutdown, up to 600 s)", timeout=60)
            status, took = _term_and_time(run, timeout=30)
    assert status == 143, run.output[-3000:]
    expected = "queue unreadable for 2 polls" if path == "unreadable queue" else "no state from the worker for 2 polls"
    assert expected in run.output
    assert took < 3 + 5, f"exited {took:.1f} s after TERM (grace 3 s)"


def test_term_while_finishing_before_the_job_deadline_is_acted_on_at_once(moto_server, sqs, make_queues, tmp_path):
    # Past the take window the worker finishes its running task; Batch's TERM (a Spot reclaim)
    # meanwhile gives it the grace and gives its message back, as anywhere else.
    queues = make_queues(visibility_timeout=60)
    env = _deadline_env(moto_server, queues, tmp_path, JOB_TIMEOUT_SECONDS=60, TASK_TIME_LIMIT_SECONDS=40)
    fill(env, 1, "probe.record", args=["finishing", 30])
    with running_script(env, tmp_path / "out.log") as run:
        _wait_for_output(run, "job deadline: a task taken now could not finish", timeout=60)
        assert run.events().get("start")
        status, took = _term_and_time(run, timeout=30)
        visible_after = _seconds_until_visible(sqs, queues, since=time.monotonic(), timeout=5)
    assert status == 143, run.output[-3000:]
    assert took < 3 + 5, f"exited {took:.1f} s after TERM (grace 3 s)"
    assert "done" not in run.events()
    print(f"TERM while finishing: exit 143 {took:.1f} s after it; task visible {visible_after:.1f} s later")


@pytest.mark.parametrize("command", ['sleep "$1"', "sleep_pid=$!"])
def test_pause_ends_on_a_term_that_lands_before_its_sleep_is_known(tmp_path, command):
    # The script's own on_signal and pause, with a DEBUG trap that sends TERM just before the
    # command given runs: before the sleep starts, or after it started but before its pid is kept.
    import subprocess

    script = Path(__file__).resolve().parents[2] / "batch_celery_container" / "run_celery_worker.sh"
    harness = f"""
set -euo pipefail
set -T
eval "$(sed -n '/^on_signal() {{/,/^}}/p; /^now_ms() {{/,/^}}/p; /^pause() {{/,/^}}/p' '{script}')"
stop_signal="" stop_signal_ms="" sleep_pid=""
trap 'on_signal TERM' TERM
target={command!r}
trap '[[ "$BASH_COMMAND" == "$target" && -z "$stop_signal" ]] && kill -TERM $$ || true' DEBUG
start=$SECONDS
pause 20
trap - DEBUG
echo "paused $(( SECONDS - start )) s, signal ${{stop_signal:-none}}"
"""
    result = subprocess.run(["bash", "-c", harness], capture_output=True, text=True, timeout=40)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() in ("paused 0 s, signal TERM", "paused 1 s, signal TERM"), result.stdout
