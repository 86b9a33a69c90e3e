"""Fix 6: a consumer restart keeps the running tasks' messages and consumes again.

On a connection error in the event loop (e.g. a credential refresh that fails near expiry) Celery
closes the channel and consumes on a new one, while running tasks go on. kombu's ``Channel.close``
gives back every unacked message, running ones included: another worker (or this one) started the
task a second time, and the first run's ack went to the forgotten QoS, so the message was never
deleted. Here only messages no task has started go back; a running task's message stays held (the
heartbeat extends it) and its ack deletes it by its receipt handle. And the event loop is handed to
the new channel: Celery's ``hub.reset()`` clears kombu's current loop, so a channel created after a
restart never polled again (the worker stayed up consuming nothing).
(tests/container/test_transport_reconnect.py reproduces both.)
"""

from __future__ import annotations

import logging

from kombu.asynchronous import get_event_loop, set_event_loop

logger = logging.getLogger(__name__)


class Reconnect:
    """Mixin of sqs_transport.Channel."""

    # Running tasks' messages kept through a close; read before _delivered by holding.Holding.held().
    _kept_through_close: dict = {}
    _client_after_close = None

    def basic_consume(self, queue, no_ack, callback, consumer_tag, *args, **kwargs):
        if getattr(self, "hub", None) is None:
            # Created after a consumer restart cleared kombu's current loop, before the transport
            # was registered with it again: without a hub kombu never polls.
            self.hub = get_event_loop()
        return super().basic_consume(queue, no_ack, callback, consumer_tag, *args, **kwargs)

    def close(self):
        if self.closed:
            return super().close()
        transport = self.connection
        self._client_after_close = getattr(transport, "client", None)
        self._kept_through_close = self._running_messages()
        try:
            super().close()  # gives back the other unacked messages through _restore
        finally:
            kept = self._kept_through_close
            if kept:
                delivered = self.qos._delivered
                for tag, message in kept.items():
                    delivered[tag] = message  # its ack (basic_ack) or reject finds it here
                # The ack of a kept message needs the transport's clients and options, which
                # kombu unlinks from a closed channel (and then from the closed transport).
                self.connection = transport
                logger.warning("consumer restart: kept %d running task(s) held (%s); they are acked when they finish",
                               len(kept), ", ".join(str((m.headers or {}).get("id")) for m in kept.values()))
            self._kept_through_close = {}

    @property
    def conninfo(self):
        client = getattr(self.connection, "client", None)
        return client if client is not None else self._client_after_close

    @property
    def transport_options(self):
        return self.conninfo.transport_options

    def _running_messages(self) -> dict:
        """Delivery tag -> message of every unacked message whose task a pool process has started."""
        from celery.worker import state  # the worker's own registry; empty outside a worker

        running = {request.id for request in list(state.active_requests)}
        if not running or self._qos is None:
            return {}
        dirty = set(self._qos._dirty)
        return {tag: message for tag, message in list(self._qos._delivered.items())
                if tag not in dirty and (message.headers or {}).get("id") in running}

    def _restore(self, message, unwanted_delivery_info=("sqs_message", "sqs_queue")):
        """A running task's message is not given back at a consumer restart."""
        if message.delivery_tag in self._kept_through_close:
            return None
        return super()._restore(message, unwanted_delivery_info)


class HandsOnEventLoop:
    """Mixin of sqs_transport.Transport."""

    def register_with_event_loop(self, connection, loop):
        # Celery calls this on every (re)connect. After a consumer restart kombu's current loop is
        # None (Celery's hub.reset() cleared it), and every SQS channel made since has no hub.
        if get_event_loop() is None:
            set_event_loop(loop)
        for channel in list(self.channels):
            if getattr(channel, "hub", None) is None:
                channel.hub = loop
        return super().register_with_event_loop(connection, loop)
