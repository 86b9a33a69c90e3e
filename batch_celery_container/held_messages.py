"""The SQS messages one worker holds: kept invisible while held, released the moment they are not.

Inside the worker (``Heartbeat``, started by the transport in sqs_transport/holding.py):

* **Heartbeat.** Every message the worker has received and not yet acked or rejected (running,
  waiting for a free process, or waiting for its ETA) has its visibility extended every
  ``heartbeat_seconds`` back to the queue's visibility timeout, within SQS's 12 hours from the
  receive. So the visibility timeout is only the crash-recovery window: when the worker's main
  process dies, the extensions stop and its messages return to the queue within one window.
  A failed extension (throttling, outage) is retried at the next tick; a receipt handle SQS no
  longer accepts is dropped with one log line, never retried forever.
* **State file.** Twice a second, and at once when a message arrives or is acked, it writes ``held.json`` in the run folder: what it holds (with
  receipt handles), whether it is draining and how many long polls are still open. The lifecycle
  script reads it to decide that *this* worker is idle (other workers' messages never keep it),
  and to release what a killed worker held.
* **Drain.** While the file ``stop-consuming`` exists in the run folder, the worker opens no new
  long poll, releases what an open poll still brings, and once no poll is open writes the marker
  ``drained``. A long poll left open by an exiting worker would otherwise take a message on the
  server and hide it for the whole window (seen on moto and reported for SQS, aws-sdk-js#2350).

* **Dead-lettered originals.** A message the worker copied to the dead-letter queue is hidden for
  the rest of SQS's 12 hours before the copy is sent; if deleting it then fails, the heartbeat
  retries the delete (backing off to 30 s) and the state file lists it under ``dead_lettered``:
  the worker is not idle while one is left, and ``release`` deletes those instead of showing them.

From the lifecycle script (``python held_messages.py held|release``): print how many messages the
worker holds (exit 1 when the state file is missing or stale: unknown is never idle), or make every
message the state file lists visible again at once (after the worker was killed), except a
dead-lettered original, which is deleted.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Iterable

from limits import SQS_MAX_HOLD_SECONDS

logger = logging.getLogger(__name__)

STATE_FILE = "held.json"
STOP_FILE = "stop-consuming"
DRAINED_FILE = "drained"
# How often the state file is written and the stop file looked at.
TICK_SECONDS = 0.5
# A state file older than this says nothing about the worker (it is wedged or gone).
STALE_AFTER_SECONDS = 5.0
# ChangeMessageVisibilityBatch takes at most 10 entries.
BATCH_SIZE = 10
# Retries of a failed delete of a dead-lettered original: from 1 s, doubling, at most this far apart.
DELETE_RETRY_MAX_SECONDS = 30.0
# Codes of a receipt handle SQS will never accept again: the message was deleted, or its
# visibility ran out and it was received elsewhere.
GONE_CODES = {"ReceiptHandleIsInvalid", "InvalidParameterValue", "MessageNotInflight",
              "AWS.SimpleQueueService.MessageNotInflight"}


@dataclass(frozen=True, slots=True)
class Held:
    """One held message as the state file lists it."""

    receipt_handle: str
    queue_url: str
    message_id: str = ""
    task: str = ""
    task_id: str = ""
    received: float = 0.0


HELD_FIELDS = tuple(f.name for f in fields(Held))


def _sqs_client(region: str | None):
    import boto3
    from botocore.config import Config

    # Short timeouts and no retries of its own: the next tick is the retry.
    return boto3.client("sqs", region_name=region,
                        config=Config(connect_timeout=3, read_timeout=5, retries={"total_max_attempts": 1}))


def change_visibility(client, messages: list[Held], seconds: Callable[[Held], int]) -> tuple[list[Held], list[Held]]:
    """Set each message's visibility; returns (gone: SQS refuses its handle, failed: try again)."""
    gone: list[Held] = []
    failed: list[Held] = []
    by_queue: dict[str, list[Held]] = {}
    for message in messages:
        by_queue.setdefault(message.queue_url, []).append(message)
    for queue_url, queued in by_queue.items():
        for start in range(0, len(queued), BATCH_SIZE):
            chunk = queued[start:start + BATCH_SIZE]
            entries = [{"Id": str(i), "ReceiptHandle": m.receipt_handle, "VisibilityTimeout": seconds(m)}
                       for i, m in enumerate(chunk)]
            try:
                answer = client.change_message_visibility_batch(QueueUrl=queue_url, Entries=entries)
            except Exception as error:  # noqa: BLE001 - an outage or throttling: retried next tick
                logger.debug("ChangeMessageVisibilityBatch on %s failed: %s", queue_url, error)
                failed += chunk
                continue
            for entry in answer.get("Failed", []):
                message = chunk[int(entry["Id"])]
                (gone if entry.get("Code") in GONE_CODES or entry.get("SenderFault") else failed).append(message)
    return gone, failed


class Heartbeat:
    """The worker side: one daemon thread per worker process beside kombu's event loop (see the
    module docstring). Every channel that consumes registers itself; a channel replaced after a
    reconnect stays registered (weakly) while Celery still runs tasks whose messages it holds."""

    def __init__(self, *, visibility_timeout: int, heartbeat_seconds: int, run_dir: str | None, region: str | None):
        self._sources: weakref.WeakSet = weakref.WeakSet()
        self.visibility_timeout = visibility_timeout
        self.heartbeat_seconds = heartbeat_seconds
        self.run_dir = Path(run_dir) if run_dir else None
        self.region = region
        self.draining = False
        self._extended_at: dict[str, float] = {}   # receipt handle -> last successful extension
        # Handles the event loop gave back (visibility 0, or a failed task's retry delay): an
        # extension must never land after that and hide the message again. The lock orders the two.
        self.lock = threading.Lock()
        self._given_back: set[str] = set()
        self._refused: set[str] = set()            # SQS refused an extension: acked, or lost
        self._failing = False
        # Message ID -> (original copied to the dead-letter queue, next try, seconds to the one after).
        self._to_delete: dict[str, tuple[Held, float, float]] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqs-heartbeat", daemon=True)
        self._client = None

    def add(self, source) -> None:
        """``source`` (a consuming channel) has ``held() -> list[Held]``, ``open_polls() -> int``
        and ``drain_confirmed``, which its event loop sets once it declined a poll while draining."""
        self._sources.add(source)

    def given_back(self, receipt_handle: str) -> None:
        """Call with ``self.lock`` held, before changing the message's visibility yourself."""
        self._given_back.add(receipt_handle)

    def resume(self, receipt_handle: str) -> None:
        """Undo ``given_back``: the message stays held after all and is extended again."""
        with self.lock:
            self._given_back.discard(receipt_handle)

    def delete_later(self, original: Held) -> None:
        """Retry deleting ``original`` (its copy is in the dead-letter queue) until SQS takes it."""
        with self.lock:
            self._to_delete[original.message_id] = (original, time.time() + 1.0, 2.0)
        self.poke()

    def dead_lettered(self) -> list[Held]:
        with self.lock:
            return [original for original, _, _ in self._to_delete.values()]

    def _snapshot(self) -> list[Held]:
        held: dict[str, Held] = {}
        for source in list(self._sources):
            for message in source.held():
                held.setdefault(message.receipt_handle, message)
        return list(held.values())

    def _open_polls(self) -> int:
        return sum(source.open_polls() for source in list(self._sources))

    def start(self) -> None:
        if not self._thread.is_alive():
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def poke(self) -> None:
        """Write the state now, not at the next tick: a message was just received or finished."""
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait(TICK_SECONDS)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - the heartbeat must outlive any one bad tick
                logger.exception("heartbeat tick failed; trying again in %.0f s", TICK_SECONDS)

    def tick(self) -> None:
        if self.run_dir is not None:
            draining = (self.run_dir / STOP_FILE).exists()
            if draining and not self.draining:
                # Only a poll the event loop declines from now on confirms the drain.
                for source in list(self._sources):
                    source.drain_confirmed = False
            self.draining = draining
        held = self._snapshot()
        now = time.time()
        live = {m.receipt_handle for m in held}
        for message in held:
            if message.receipt_handle in self._refused:
                self._refused.discard(message.receipt_handle)
                logger.warning("message %s (task %s %s) is still held, but SQS refused to extend it: its visibility "
                               "ran out (extensions failed for a whole window) and another worker may run it too",
                               message.message_id, message.task, message.task_id)
        with self.lock:
            self._extend([m for m in held if m.receipt_handle not in self._given_back
                          and now - self._extended_at.get(m.receipt_handle, m.received) >= self.heartbeat_seconds], now)
            self._given_back &= live
        for handle in list(self._extended_at):
            if handle not in live:
                del self._extended_at[handle]
        self._refused &= live  # refused handles the worker has since acked are no concern
        self._delete_dead_lettered(now)
        self._write_state(held, now)

    def _delete_dead_lettered(self, now: float) -> None:
        with self.lock:
            due = [(o, wait) for o, at, wait in self._to_delete.values() if at <= now]
        if not due:
            return
        if self._client is None:
            self._client = _sqs_client(self.region)
        for original, wait in due:
            outcome = delete(self._client, original)
            with self.lock:
                if outcome == "failed" and original.received + SQS_MAX_HOLD_SECONDS > now:
                    self._to_delete[original.message_id] = (original, now + wait, min(2 * wait, DELETE_RETRY_MAX_SECONDS))
                    continue
                self._to_delete.pop(original.message_id, None)
            if outcome == "deleted":
                logger.warning("dead-lettered message %s (task %s %s) deleted from its queue at a later try",
                               original.message_id, original.task, original.task_id)
            elif outcome == "gone":
                logger.error("dead-lettered message %s (task %s %s): SQS refuses its receipt handle (already deleted, "
                             "or its 12 h hold ended and it was received again)", original.message_id, original.task,
                             original.task_id)
            else:
                logger.error("dead-lettered message %s (task %s %s) could not be deleted within SQS's 12 h hold; it is "
                             "visible again and may run although its copy is in the dead-letter queue",
                             original.message_id, original.task, original.task_id)

    def _extend(self, due: list[Held], now: float) -> None:
        if not due:
            return
        if self._client is None:
            self._client = _sqs_client(self.region)

        def seconds(message: Held) -> int:
            # SQS refuses a visibility that reaches past 12 hours from the receive.
            left = int(message.received + SQS_MAX_HOLD_SECONDS - now) - 1
            return max(0, min(self.visibility_timeout, left))

        expiring = [m for m in due if seconds(m) == 0]
        for message in expiring:
            logger.error("message %s (task %s %s) has been held for 12 hours, SQS's limit; it cannot be "
                         "extended and becomes visible again", message.message_id, message.task, message.task_id)
            self._extended_at[message.receipt_handle] = float("inf")
        due = [m for m in due if seconds(m) > 0]
        gone, failed = change_visibility(self._client, due, seconds)
        for message in gone:
            # Acked a moment ago (usual: the next snapshot no longer has it), or its visibility ran
            # out before we could extend it (the next snapshot still has it: warned in tick()).
            self._extended_at[message.receipt_handle] = float("inf")
            self._refused.add(message.receipt_handle)
            logger.debug("SQS refused to extend message %s (acked meanwhile, or expired)", message.message_id)
        done = {m.receipt_handle for m in gone} | {m.receipt_handle for m in failed}
        for message in due:
            if message.receipt_handle not in done:
                self._extended_at[message.receipt_handle] = now
        if failed and not self._failing:
            self._failing = True
            logger.warning("could not extend the visibility of %d held message(s); retrying every %.0f s "
                           "(they stay hidden for up to %d s after their last extension)",
                           len(failed), TICK_SECONDS, self.visibility_timeout)
        elif not failed and self._failing:
            self._failing = False
            logger.warning("visibility extensions succeed again")

    def _write_state(self, held: list[Held], now: float) -> None:
        if self.run_dir is None:
            return
        polls = self._open_polls()
        state = {"pid": os.getpid(), "written": now, "draining": self.draining, "open_polls": polls,
                 "held": [asdict(m) for m in held], "dead_lettered": [asdict(m) for m in self.dead_lettered()]}
        write_json(self.run_dir / STATE_FILE, state)
        drained = self.run_dir / DRAINED_FILE
        # A channel closed by a consumer restart (it only keeps running tasks' messages) opens no
        # poll again, so it never confirms a drain itself.
        confirmed = all(source.drain_confirmed or getattr(source, "closed", False) for source in list(self._sources))
        if self.draining and confirmed and polls == 0:
            drained.touch()
        elif drained.exists():
            drained.unlink(missing_ok=True)


def delete(client, message: Held) -> str:
    """Delete one message: "deleted", "gone" (SQS refuses its handle) or "failed" (try again)."""
    try:
        client.delete_message(QueueUrl=message.queue_url, ReceiptHandle=message.receipt_handle)
    except Exception as error:  # noqa: BLE001 - an outage or throttling: retried later
        code = getattr(error, "response", {}).get("Error", {}).get("Code")
        if code in GONE_CODES:
            return "gone"
        logger.debug("DeleteMessage of %s failed: %s", message.message_id, error)
        return "failed"
    return "deleted"


def write_json(path: Path, value: dict) -> None:
    """Replace ``path`` atomically, readable by this user only (it holds receipt handles)."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "w") as file:
            json.dump(value, file)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read_state(run_dir: str | Path, *, max_age: float = STALE_AFTER_SECONDS) -> dict | None:
    """The worker's last state, or None if missing, unreadable or older than ``max_age`` seconds."""
    try:
        state = json.loads((Path(run_dir) / STATE_FILE).read_text())
        written = float(state["written"])
        held = state["held"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(held, list) or time.time() - written > max_age:
        return None
    return state


def _dead_lettered(state: dict) -> list[Held]:
    items = state.get("dead_lettered")
    if not isinstance(items, list):
        return []
    return [Held(**{k: v for k, v in item.items() if k in HELD_FIELDS}) for item in items if isinstance(item, dict)]


def held_count(run_dir: str | Path) -> int | None:
    """Held messages, and dead-lettered originals still to delete: the worker is not idle while either is left."""
    state = read_state(run_dir)
    return None if state is None else len(state["held"]) + len(_dead_lettered(state))


def release(run_dir: str | Path, region: str | None) -> tuple[int, int]:
    """Make every message of the last state file visible again now; returns (released, not)."""
    state = read_state(run_dir, max_age=float("inf"))
    if state is None:
        return 0, 0
    # A dead-lettered original is deleted, never shown again: its copy is in the dead-letter queue.
    dead = _dead_lettered(state)
    for original in dead:
        if delete(_sqs_client(region), original) == "failed" and delete(_sqs_client(region), original) == "failed":
            logger.error("dead-lettered message %s could not be deleted; it stays hidden until 12 h after its "
                         "receive", original.message_id)
    dead_ids = {m.message_id for m in dead}
    messages = [Held(**{k: v for k, v in item.items() if k in HELD_FIELDS}) for item in state["held"]]
    messages = [m for m in messages if not (m.message_id and m.message_id in dead_ids)]
    if not messages:
        return 0, 0
    gone, failed = change_visibility(_sqs_client(region), messages, lambda m: 0)
    if failed:  # one more try: the common cause is a single throttled call
        gone2, failed = change_visibility(_sqs_client(region), failed, lambda m: 0)
        gone += gone2
    return len(messages) - len(gone) - len(failed), len(gone) + len(failed)


def main(argv: Iterable[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    run_dir = os.environ.get("WORKER_RUN_DIR", "")
    if len(args) != 1 or args[0] not in ("held", "release") or not run_dir:
        print("usage: WORKER_RUN_DIR=DIR held_messages.py held|release", file=sys.stderr)
        return 2
    if args[0] == "held":
        count = held_count(run_dir)
        if count is None:
            print(f"held_messages: no fresh {STATE_FILE} in {run_dir} (the worker wrote none in the last "
                  f"{STALE_AFTER_SECONDS:.0f} s)", file=sys.stderr)
            return 1
        print(count)
        return 0
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    released, not_released = release(run_dir, region)
    print(f"released {released} held message(s) at once"
          + (f"; {not_released} already gone or not released (they return within the visibility timeout)"
             if not_released else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
