"""Fix 1: an unreachable endpoint must not end the worker.

kombu's asynchronous ReceiveMessage turns a timeout, a 5xx answer or a connection that could not be
made (pycurl reports HTTP 599) into an empty *list* (``AsyncAWSQueryConnection._on_list_ready``), but
``Channel._on_messages_ready`` expects the parsed *dict* and calls ``messages.get('Messages')``. The
AttributeError escapes the event loop and Celery stops with "Unrecoverable error:
AttributeError("'list' object has no attribute 'get'")". Here that answer means what kombu intends:
no messages this time. (tests/container/test_lifecycle.py::test_endpoint_outage_does_not_stop_worker
reproduces it.)
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


class EndpointOutage:
    """Mixin of sqs_transport.Channel."""

    _endpoint_unreachable = False

    def _on_messages_ready(self, queue, qname, messages):
        if isinstance(messages, dict):
            if self._endpoint_unreachable:
                self._endpoint_unreachable = False
                logger.warning("SQS answers again for queue %s; consuming", qname)
            return super()._on_messages_ready(queue, qname, messages)
        # Logged once per outage: the worker polls again every polling interval meanwhile.
        if not self._endpoint_unreachable:
            self._endpoint_unreachable = True
            logger.warning(
                "SQS did not answer ReceiveMessage for queue %s (unreachable, timeout or 5xx); "
                "the worker keeps polling until it answers",
                qname,
            )
        return 0
