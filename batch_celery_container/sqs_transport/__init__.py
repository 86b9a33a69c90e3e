"""kombu's SQS transport with defects of kombu 5.7.0 fixed, so no message is lost, kills a worker or waits out a timeout.

One fix a module, each named for what it makes true (its docstring says what kombu does instead,
and which test reproduces it):

1. endpoint_outage.py      an unreachable endpoint does not end the worker: no messages this time
2. own_queue.py            a message belongs to the queue it was received from; an envelope kombu
                           cannot unwrap is a malformed message of that queue (to the dead-letter queue)
3. failed_task_backoff.py  a failed task comes back soon (linear backoff), not after the whole
                           visibility timeout
4. holding.py              a message is held only while the worker works on it (held_messages.py's
                           heartbeat), and given back at once when it is not
   draining.py             a draining worker opens no long poll and gives back what an open one brings
5. dead_lettering.py       dead-lettering never leaves a task both in the dead-letter queue and running
6. reconnect.py            a consumer restart keeps the running tasks' messages held and consumes again

sent_timestamp.py is no fix: it hands SQS's SentTimestamp to the task (task_metrics.py).

Each module holds one mixin; ``Channel`` stacks them over kombu's channel. Where two change the same
kombu method each does its part and calls ``super()``, so their order below is part of the design:
the drain answers a poll before anything else looks at it, an outage's answer (a list) never reaches
the others, the receive time is stamped before dead-lettered messages are filtered out by it, an ack
pokes the heartbeat after the dead-lettering's own ack, the dead-lettering decides a reject before
the backoff, and a message kept through a consumer restart is never given back.

Selected with ``broker_transport = "sqs_transport:Transport"`` (worker_settings.py); imported by
bare name from the worker's folder (the image's WORKDIR, or site-packages/batch_celery_worker/).
Remove a fix (its module and its line below) once kombu handles the case itself.
"""

from __future__ import annotations

import kombu_contract

# A worker started without the lifecycle script still refuses another kombu or celery release,
# before anything here touches kombu's private members.
kombu_contract.check()

from kombu.transport import SQS  # noqa: E402

from .dead_lettering import DeadLettering, copied_attributes  # noqa: E402
from .draining import Draining  # noqa: E402
from .endpoint_outage import EndpointOutage  # noqa: E402
from .failed_task_backoff import FailedTaskBackoff  # noqa: E402
from .holding import Holding  # noqa: E402
from .own_queue import OwnQueue  # noqa: E402
from .reconnect import HandsOnEventLoop, Reconnect  # noqa: E402
from .sent_timestamp import SentTimestamp  # noqa: E402

__all__ = ["Channel", "Transport", "copied_attributes"]


class Channel(
    Reconnect,           # 6: first, so a kept message never reaches the give-back below
    Draining,            # 4: answers every poll first (counts it, gives back what a drain receives)
    EndpointOutage,      # 1: an answer that is no dict stops here
    SentTimestamp,
    OwnQueue,            # 2
    Holding,             # 4: stamps the receive time, pokes the heartbeat on receive and ack
    DeadLettering,       # 5: reads the receive time; its ack and reject come before kombu's
    FailedTaskBackoff,   # 3
    SQS.Channel,
):
    """kombu's SQS channel with the fixes above."""


class Transport(HandsOnEventLoop, SQS.Transport):
    Channel = Channel
