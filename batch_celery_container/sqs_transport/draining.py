"""Fix 4, the drain: a stopping worker leaves no long poll open to take a message nobody will run.

While the lifecycle script's ``stop-consuming`` file exists (held_messages.py's heartbeat sees it),
the worker opens no new long poll, gives back at once what a poll still open brings, and once none is
open the heartbeat writes the ``drained`` marker the script waits for. A long poll left open by an
exiting worker would take a message on the server and hide it for the whole visibility timeout.
"""

from __future__ import annotations

import logging

from botocore.exceptions import BotoCoreError, ClientError

logger = logging.getLogger(__name__)


class Draining:
    """Mixin of sqs_transport.Channel (uses holding.Holding's ``_heartbeat``)."""

    _open_polls = 0
    # Set by the event loop when it declined to open a poll because the worker drains (see
    # Heartbeat.tick): only then can no poll open after the drain was seen.
    drain_confirmed = False

    def open_polls(self) -> int:
        return 0 if self.closed else self._open_polls

    @property
    def _draining(self) -> bool:
        return self._heartbeat is not None and self._heartbeat.draining

    def _schedule_queue(self, queue):
        if self._draining:
            # No new long poll while draining; look again soon (the lifecycle script may resume).
            if not self.drain_confirmed:
                self.drain_confirmed = True
                if self._open_polls == 0:
                    self._heartbeat.poke()  # the lifecycle script waits for the "drained" marker
            if queue in self._active_queues:
                self.hub.call_later(0.5, self._schedule_queue, queue)
            return None
        self.drain_confirmed = False
        return super()._schedule_queue(queue)

    def _get_from_sqs(self, queue_name, queue_url, connection, count=1, callback=None):
        self._open_polls += 1
        return super()._get_from_sqs(queue_name, queue_url, connection, count=count, callback=callback)

    def _on_messages_ready(self, queue, qname, messages):
        self._open_polls = max(0, self._open_polls - 1)
        if self._draining and self._open_polls == 0:
            self._heartbeat.poke()  # the lifecycle script waits for the "drained" marker
        if self._draining and isinstance(messages, dict) and messages.get("Messages"):
            # The worker is stopping: what the last long poll brought goes back at once.
            self._give_back_polled(queue, qname, messages["Messages"])
            return 0
        return super()._on_messages_ready(queue, qname, messages)

    def _give_back_polled(self, queue_url, qname, messages):
        client = self.sqs(queue=self.canonical_queue_name(qname))
        for message in messages:
            try:
                client.change_message_visibility(
                    QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
                )
            except (ClientError, BotoCoreError) as error:
                logger.warning("draining: could not give back message %s (%s); it returns within the visibility "
                               "timeout", message.get("MessageId"), error)
            else:
                logger.info("draining: gave back message %s that the last long poll brought", message.get("MessageId"))
