"""The worker's consumer: what a worker does with a task it does not know.

Celery fails such a task for good (``NotRegistered``) and logs a 20-line ERROR holding the whole
message body: recording paths and record ids, patients' data. When workers on one queue differ
in ``--include`` (a rolling deploy, a forgotten module), the task should reach a worker that
knows it instead. So a worker that does not know a task hands it back to its queue and pauses
its own consumption briefly (1, 2, 4 .. 10 s: an idle worker that knows the task, blocked on
the queue's wake-up list, takes it meanwhile). After ``UNKNOWN_TASK_MAX_OFFERS`` hand-backs
the task ends as FAILURE with code ``unknown_task``. Every log line names the task and its id,
never its arguments.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.exceptions import NotRegistered
from celery.utils.objects import Bunch
from celery.worker.consumer import Consumer as CeleryConsumer

from ..record import RecordKeys
from ..record.workers import count_unknown_offer
from .transport import Channel

__all__ = ["Consumer", "offer_pause_s"]

logger = logging.getLogger(__name__)

_MAX_PAUSE_S = 10.0


def offer_pause_s(offer: int) -> float:
    """How long a worker stops consuming after handing back a task for the ``offer``-th time."""
    return float(min(_MAX_PAUSE_S, 2.0 ** max(0, offer - 1)))


class Consumer(CeleryConsumer):  # type: ignore[misc]
    """Celery's consumer, handing unknown tasks back to their queue (``worker_consumer``)."""

    def on_unknown_task(self, body: Any, message: Any, exc: Any) -> None:
        headers = message.headers if isinstance(message.headers, dict) else {}
        task_id = str(headers.get("id", ""))
        name = str(headers.get("task", ""))
        app = self.app
        settings = app.settings
        limit = settings.unknown_task_max_offers
        offer = count_unknown_offer(
            app.backend.client, RecordKeys.of(settings), task_id, ttl_s=settings.result_expires_s
        )
        if offer < limit:
            pause = offer_pause_s(offer)
            logger.warning(
                "task %s (%s) is not registered on this worker; handed back to its queue for a "
                "worker that knows it (%d of %d; this worker pauses %.0f s). Every worker on a "
                "queue needs the same task modules (--include / TASK_MODULES)",
                task_id,
                name,
                offer,
                limit,
                pause,
            )
            message.reject(requeue=True)
            channel = getattr(message, "channel", None)
            if isinstance(channel, Channel):
                channel.pause_consuming(pause)
            return
        logger.error(
            "task %s (%s): no worker that took it knows it (%d hand-backs); failing it "
            "[unknown_task]",
            task_id,
            name,
            offer,
        )
        request = Bunch(
            name=name,
            chord=None,
            root_id=headers.get("root_id"),
            correlation_id=message.properties.get("correlation_id"),
            reply_to=message.properties.get("reply_to"),
            errbacks=None,
        )
        # Store first, then drop the message: a crash in between leaves it to be redelivered
        # (and failed again, as a final state is never overwritten), not lost.
        app.backend.mark_as_failure(task_id, NotRegistered(name), request=request)
        message.reject_log_error(logger, self.connection_errors)
