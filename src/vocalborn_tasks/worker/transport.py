"""kombu's Redis transport with atomic reservation, folded acks and wake-up lists.

kombu takes a message with ``BRPOP`` (which removes it from its list) and records it in
``unacked`` in a second round trip: a worker SIGKILLed between the two held the only copy
(kombu#305, celery#7950). This transport takes and records in one step, the ``reserve`` script
of the task record, and so a kill can leave a message queued or reserved, never nowhere.

A Lua script cannot block, so an idle worker waits on *wake-up lists* instead: every publish
(ours and kombu's) pushes one token on ``<prefix>:wake:<queue>`` next to the message, and an
idle worker blocks with ``BRPOP`` on the tokens of its queues, then reserves. The consume loop
is a small state machine on the channel's one connection:

    busy:  EVALSHA reserve --message--> deliver, stay busy
                            --nothing--> idle
    idle:  BRPOP wake lists (1 s) --token or timeout--> busy (reserve, telling which token)

A token lost with a killed worker costs at most one ``BRPOP`` timeout (1 s); a stale token costs
one empty reserve. The reserve script also applies the acknowledgements made since the last
call, so acking costs no round trip of its own (the result backend's ``store`` script already
removes the entry of every task that stores an outcome; this is the fallback for the rest).

It also drops queue entries that are not task messages instead of dying on them (kombu decodes
each entry inside its event loop: one stray ``LPUSH`` would stop every worker that pops it),
and reuses one command client per connection pool.

**Failover.** The channel's connections report a server that is not a writable master as a
connection error, and drop themselves (failover.py): ``UNBLOCKED`` (the idle ``BRPOP`` on a
master being demoted), ``READONLY`` (a reserve on a replica), ``MASTERDOWN``, ``NOREPLICAS``
(a master cut off from its replicas). Kombu's own answer to a ``ResponseError`` is
"Unrecoverable error" (the worker exits); a connection error would restart the whole consumer,
at once and again for as long as the server stays a replica. Here each means "nothing reserved
now": the loop sends nothing for a quarter second (such a server may refuse even a blocking
read; a timer brings the event loop back), then connects again, asking the sentinels for the
master, and carries on; a spell is logged once. A connection lost outright (the sentinels
close every client of a master they demote) is kombu's usual reconnect. After a failover the
new master has no scripts: the NOSCRIPT reply sends the next reserve as source.
:class:`SentinelTransport` is the same over kombu's Sentinel channel (``REDIS_SENTINELS``).

**Confirmed reservations** (``REDIS_REPLICA_ACKS`` above 0, the default with sentinels). For
about a second after a promotion the old master still takes writes (a replica follows it until
the sentinels move it): a task reserved there is still queued on the new master and would run
a second time while it runs here. So the reserve goes out with the record's ``WAIT`` (every
replica seen on this master in the last seconds, record/confirm.py) in the same round trip,
and a reservation counts only once they hold it. An unconfirmed one is held (nothing else is
taken) and asked about again; it is given up, undelivered, when the sentinels name another
master, its connection drops, or ``REDIS_FAILOVER_WAIT_S`` passes: it stays reserved on the
server that took it (the reaper hands it back if that server stays master).
"""

# kombu's transport is partly annotated: calls into it are untyped by nature.
# mypy: disable-error-code="no-untyped-call"
from __future__ import annotations

import json
import logging
import time
from queue import Empty
from typing import Any

import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError
from redis.retry import Retry

from ..record import Record, RecordKeys, calls
from ..record.confirm import Confirmation
from . import faults
from .celery_private import running_delivery_tags, worker_stopping
from .failover import (
    FailoverConnection,
    FailoverError,
    FailoverSSLConnection,
    SentinelFailoverConnection,
    SentinelFailoverSSLConnection,
)

__all__ = ["Channel", "QoS", "SentinelChannel", "SentinelTransport", "Transport"]

logger = logging.getLogger(__name__)

#: Transport option naming the deployment's key prefix (set by the app factory).
PREFIX_OPTION = "vocalborn_key_prefix"
#: Transport options of confirmed reservations: ``REDIS_REPLICA_ACKS`` (0: off) and
#: ``REDIS_FAILOVER_WAIT_S`` (see :meth:`Channel._confirmed`).
REPLICA_ACKS_OPTION = "vocalborn_replica_acks"
FAILOVER_WAIT_OPTION = "vocalborn_failover_wait_s"

#: How long the consume loop waits after a failover reply before it tries again.
NOT_WRITABLE_PAUSE_S = 0.25


def _is_envelope(message: Any) -> bool:
    return (
        isinstance(message, dict)
        and isinstance(message.get("properties"), dict)
        and isinstance(message.get("headers", {}), dict)
        and isinstance(message["properties"].get("delivery_tag", ""), str)
    )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _nothing() -> None:
    """A timer's callback whose only effect is that the event loop runs again."""


class QoS(kombu_redis.QoS):
    """kombu's ack emulation, with the Redis side of acks and reservations moved into scripts."""

    def append(self, message: Any, delivery_tag: str) -> None:
        channel: Channel = self.channel
        if channel.reserved_by_script(delivery_tag):
            virtual.QoS.append(self, message, delivery_tag)  # in-memory bookkeeping only
        else:
            super().append(message, delivery_tag)

    def ack(self, delivery_tag: str) -> None:
        channel: Channel = self.channel
        channel.defer_ack(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)

    def restore_unacked(self, client: Any = None) -> Any:
        """Hand reserved messages back when the channel closes, except those still running.

        kombu restores every delivered, unacknowledged message when a channel closes: at
        shutdown, and also when the connection to Redis is lost. After a connection loss the
        worker keeps running its tasks (each stores its outcome and acknowledges itself
        through the result backend once Redis is back): handing their messages back would run
        them twice. So only a stopping worker hands back what it runs; messages it holds but
        has not started go back either way.
        """
        if worker_stopping():
            return super().restore_unacked(client)
        running = running_delivery_tags()
        with self.channel.conn_or_acquire(client) as conn:
            for tag in list(self._delivered):
                if tag not in running:
                    self.restore_by_tag(tag, client=conn)
        self._delivered.clear()
        return None


class Channel(kombu_redis.Channel):
    """A Redis channel whose consume loop reserves atomically (see the module docstring)."""

    QoS = QoS
    connection_class: type[redis.Connection] = FailoverConnection
    connection_class_ssl: type[redis.SSLConnection] = FailoverSSLConnection
    _sync_client: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._vb_idle = False  # our last reserve found nothing: wait on the wake-up lists
        self._vb_waiting = False  # the command in flight is the BRPOP on the wake-up lists
        self._vb_token = ""  # queue whose wake-up token we consumed, told to the next reserve
        self._vb_acks: list[str] = []  # acknowledgements not yet applied in Redis
        self._vb_sent_acks = 0  # how many of them the reserve in flight carries
        self._vb_reserved: set[str] = set()  # tags the reserve script recorded as unacked
        self._vb_send_source = False  # the server forgot our script: send it whole once
        self._vb_pause_until = 0.0  # monotonic time before which we take nothing (see below)
        self._vb_refused = False  # the server is not a writable master: said once per spell
        self._vb_quiet_until = 0.0  # monotonic time before which we send nothing (failover)
        self._vb_wake_at = 0.0  # when the event loop was last asked to come back for us
        self._vb_tail = 0  # replies due after the reserve's: its WAIT (and INFO replication)
        self._vb_needed = 0  # replicas the WAIT in flight asks for
        self._vb_held: Any = None  # a reservation the replicas have not confirmed yet
        self._vb_hold_until = 0.0  # monotonic time after which it is given up
        self._vb_held_drops = 0  # the connection's drop count when it was reserved
        super().__init__(*args, **kwargs)
        options = self.connection.client.transport_options or {}
        self._vb_keys = RecordKeys(str(options.get(PREFIX_OPTION, "vocalborn")))
        acks = int(options.get(REPLICA_ACKS_OPTION, 0) or 0)
        wait_s = float(options.get(FAILOVER_WAIT_OPTION, 15.0))
        self._vb_confirm = Confirmation(replicas=acks, wait_s=wait_s) if acks > 0 else None

    # --- connections --------------------------------------------------------------------------
    def _connparams(self, asynchronous: bool = False) -> Any:
        params = super()._connparams(asynchronous)
        if asynchronous:
            # The event loop's own connections (the BRPOP one and the fanout subscription of
            # remote control) must hand every connection error to kombu, which reconnects and
            # registers the new socket with its poller. redis-py's default retry reconnects a
            # subscription behind kombu's back and then blocks the event loop reading a socket
            # nothing writes to: after a failover (the sentinels close every client of a
            # demoted master) the worker stayed up and consumed nothing, for good.
            params["retry"] = Retry(NoBackoff(), 0)
        return params

    # --- command client -----------------------------------------------------------------------
    def _create_client(self, asynchronous: bool = False) -> Any:
        # kombu builds a new redis.Redis (a ~200-entry callback table) for every ack and
        # every unacked-index write: a tenth of a no-op task's worker time. The client holds
        # no connection of its own (the pool does), so one per pool is as safe and free.
        if asynchronous:
            return super()._create_client(asynchronous=True)
        pool = self.pool
        client = self._sync_client
        if client is None or client.connection_pool is not pool:
            client = self._sync_client = super()._create_client()
        return client

    # --- publishing: a wake-up token with every message ---------------------------------------
    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        if kwargs.get("_publish_batch") is not None:
            super()._put(queue, message, **kwargs)
            self._wake(queue)
            return
        pri = self._get_message_priority(message, reverse=False)
        with self.conn_or_acquire() as client:
            pipe = client.pipeline(transaction=False)
            pipe.lpush(self._q_for_pri(queue, pri), json.dumps(message))
            pipe.lpush(self._vb_keys.wake(queue), "1")
            pipe.execute()

    def _wake(self, queue: str) -> None:
        with self.conn_or_acquire() as client:
            client.lpush(self._vb_keys.wake(queue), "1")

    def _do_restore_message(
        self, payload: Any, exchange: str, routing_key: str, pipe: Any, leftmost: bool = False
    ) -> None:
        super()._do_restore_message(payload, exchange, routing_key, pipe, leftmost)
        for queue in self._lookup(exchange, routing_key):
            pipe.lpush(self._vb_keys.wake(queue), "1")

    # --- consuming ----------------------------------------------------------------------------
    def reserved_by_script(self, delivery_tag: str) -> bool:
        """Whether ``delivery_tag`` was recorded in ``unacked`` by our reserve (forget it)."""
        try:
            self._vb_reserved.remove(delivery_tag)
        except KeyError:
            return False
        return True

    def pause_consuming(self, seconds: float) -> None:
        """Take no message for ``seconds`` (after handing back a task this worker does not
        know, so that a worker that knows it gets it). The consume loop waits on a list
        nothing pushes to, so the event loop stays responsive and no wake-up token is taken."""
        self._vb_pause_until = max(self._vb_pause_until, time.monotonic() + seconds)

    def defer_ack(self, delivery_tag: str) -> None:
        """Remember an ack; the next reserve applies it (or ``close`` does)."""
        self._vb_acks.append(delivery_tag)

    def _consume_keys(self) -> tuple[list[str], list[str]] | None:
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return None
        lists = [self._q_for_pri(q, pri) for pri in self.priority_steps for q in queues]
        return list(queues), lists

    def _brpop_start(self, timeout: float | None = None) -> None:
        if self.global_keyprefix:  # pragma: no cover - refused by the app factory
            raise RuntimeError("global_keyprefix is not supported by the vocalborn transport")
        self._vb_tail = 0
        quiet = self._vb_quiet_until - time.monotonic()
        if quiet > 0:
            # The server answered a failover reply: nothing in flight until the pause ends
            # (such a server may refuse even a blocking read). The event loop comes back then.
            self._wake_after(quiet)
            return
        keys = self._consume_keys()
        if keys is None:
            return
        queues, lists = keys
        connection = self.client.connection
        self._in_poll = connection
        self._brpop_sent_at = time.monotonic()  # type: ignore[assignment]
        if self._vb_held is not None:
            if getattr(connection, "vb_drops", 0) == self._vb_held_drops:
                # A reservation not confirmed yet: ask the replicas again (a WAIT covers every
                # earlier write of this connection) before taking anything else.
                self._vb_waiting = False
                self._vb_tail = self._send_confirmation(connection)
                return
            # Dropped since: a WAIT on the new connection would confirm none of it.
            self._give_up_held()
        pause = self._vb_pause_until - time.monotonic()
        if pause > 0:
            self._vb_waiting = True
            self._vb_idle = True
            wait = min(pause, timeout or self.brpop_timeout or 1)
            connection.send_command("BRPOP", self._vb_keys.pause, f"{max(wait, 0.01):.3f}")
            return
        if self._vb_idle:
            self._vb_waiting = True
            wake = [self._vb_keys.wake(q) for q in dict.fromkeys(queues)]
            connection.send_command("BRPOP", *wake, timeout or self.brpop_timeout or 1)
            return
        self._vb_waiting = False
        self._vb_sent_acks = len(self._vb_acks)
        call = calls.reserve(self._vb_keys, lists=lists, token=self._vb_token, acks=self._vb_acks)
        connection.send_command(*call.command(by_source=self._vb_send_source))
        self._vb_tail = self._send_confirmation(connection)

    def _send_confirmation(self, connection: Any) -> int:
        """Send the WAIT (and, when due, INFO replication) of a confirmed reservation right
        behind it, on the same connection; how many replies that adds."""
        confirm = self._vb_confirm
        if confirm is None:
            return 0
        self._vb_needed = confirm.needed()
        left = (self._vb_hold_until - time.monotonic()) if self._vb_held else confirm.wait_s
        tail = confirm.tail(self._vb_needed, max(left, 0.001))
        for command in tail:
            connection.send_command(*command)
        return len(tail)

    def _brpop_read(self, **options: Any) -> bool:
        waiting = self._vb_waiting
        confirming = not waiting and self._vb_held is not None
        tail, self._vb_tail = self._vb_tail, 0
        try:
            try:
                if confirming:
                    reply = self._vb_held
                else:
                    reply = self.client.parse_response(
                        self.client.connection, "BRPOP" if waiting else "EVALSHA", **options
                    )
                confirmed = self._confirmed(reply, tail)
            except NoScriptError:
                self._vb_send_source = True
                self._read_tail(tail)  # nothing ran: the WAIT behind it confirms nothing
                raise Empty() from None
            except FailoverError as exc:
                # Nothing was reserved (a refused script stops at its first write; an
                # unblocked wait took no token). The connection is closed already: the next
                # attempt connects again, asking the sentinels for the master.
                self._on_not_writable(exc)
                raise Empty() from None
            except self.connection_errors:
                # Disconnect so the next iteration reconnects. Unapplied acks stay pending
                # (HDEL is idempotent); a token we consumed is lost (costs one BRPOP timeout).
                self.client.connection.disconnect()
                raise
            if waiting:
                self._vb_idle = False
                prefix = self._vb_keys.wake_prefix
                self._vb_token = _text(reply[0]).removeprefix(prefix) if reply else ""
                raise Empty()
            if not confirming:
                self._vb_send_source = False
                if self._vb_refused:
                    self._vb_refused = False
                    logger.info("broker: a master accepts our reservations again; taking tasks")
                del self._vb_acks[: self._vb_sent_acks]
                self._vb_sent_acks = 0
                self._vb_token = ""
            if not reply:
                self._vb_idle = True
                raise Empty()
            if not confirmed:
                self._hold(reply)
                raise Empty()
            self._vb_held = None
            return self._deliver_reserved(reply)
        finally:
            self._in_poll = None  # type: ignore[assignment]
            self._flush_brpop_reauth()

    def _read_tail(self, tail: int) -> list[Any]:
        connection = self.client.connection
        return [
            self.client.parse_response(connection, "WAIT" if i == 0 else "INFO")
            for i in range(tail)
        ]

    def _confirmed(self, reply: Any, tail: int) -> bool:
        """Whether enough replicas hold the reservation just made (or held).

        With ``REDIS_REPLICA_ACKS`` a reservation counts only once replicas hold it (the
        record's rule, record/confirm.py: every replica seen on this master in the last few
        seconds): a task taken from a master that a failover is replacing is otherwise still
        queued on the new one, and runs there a second time while it runs here.
        """
        replies = self._read_tail(tail)
        confirm = self._vb_confirm
        if confirm is None or not replies:
            return True
        if len(replies) > 1:
            confirm.observe(replies[1])
        if confirm.accepted(replies[0], self._vb_needed) or not reply:
            return True
        confirm.doubt()
        return False

    def _hold(self, reply: Any) -> None:
        """Keep an unconfirmed reservation and ask again; give it up when the sentinels name
        another master, or after ``REDIS_FAILOVER_WAIT_S``."""
        now = time.monotonic()
        if self._vb_held is None:
            self._vb_held = reply
            self._vb_hold_until = now + (self._vb_confirm.wait_s if self._vb_confirm else 0.0)
            self._vb_held_drops = getattr(self.client.connection, "vb_drops", 0)
        if now < self._vb_hold_until and not self._master_moved():
            return
        self._give_up_held()
        self.client.connection.disconnect()  # the next one asks the sentinels
        self._vb_quiet_until = now + NOT_WRITABLE_PAUSE_S

    def _give_up_held(self) -> None:
        """Forget the held reservation without delivering it: it stays reserved on the server
        that took it (a master being replaced, or, if that one stays, the reaper hands it
        back), and is still queued on the new master."""
        reply, self._vb_held = self._vb_held, None
        logger.warning(
            "broker: replicas did not confirm taking a task from %s (a failover?); leaving it "
            "to the master that survives (queued there, or handed back by the reaper)",
            _text(reply[0]),
        )

    def _master_moved(self) -> bool:
        """Whether the sentinels name a master other than the server we reserve on."""
        lookup = getattr(self.client.connection_pool, "get_master_address", None)
        connection = self.client.connection
        if lookup is None or connection is None:
            return False
        try:
            address = lookup()
        except redis.RedisError:
            return False  # the sentinels cannot tell now; ask again on the next shortfall
        return (connection.host, int(connection.port)) != (address[0], int(address[1]))

    def _on_not_writable(self, exc: FailoverError) -> None:
        if not self._vb_refused:
            self._vb_refused = True
            logger.warning(
                "broker: %s; taking no task until a master accepts writes (asking the "
                "sentinels, when configured, every %.2f s)",
                exc,
                NOT_WRITABLE_PAUSE_S,
            )
        self._vb_quiet_until = time.monotonic() + NOT_WRITABLE_PAUSE_S

    def _wake_after(self, seconds: float) -> None:
        """Have the event loop run again in ``seconds`` (it polls no longer than its next
        timer); without one (no event loop), the caller's poll timeout bounds the pause."""
        loop = getattr(self.connection, "vb_loop", None)
        due = time.monotonic() + seconds
        if loop is None or due <= self._vb_wake_at:
            return
        self._vb_wake_at = due
        loop.call_later(seconds, _nothing)

    def _deliver_reserved(self, reply: Any) -> bool:
        source, raw, tag = reply
        dest = _text(source).rsplit(self.sep, 1)[0]
        self._queue_cycle.rotate(dest)
        try:
            message = json.loads(_text(raw))
        except ValueError as exc:
            logger.error("discarded a queue entry on %r that is not JSON: %s", dest, exc)
            return True
        if not tag or not _is_envelope(message):
            logger.error("discarded a queue entry on %r that is not a task message", dest)
            return True
        tag = _text(tag)
        faults.point("after_reserve", str(message.get("headers", {}).get("id", "")))
        self._vb_reserved.add(tag)
        self.connection._deliver(message, dest)
        return True

    def close(self) -> None:
        if self._vb_acks and not self.closed:
            try:  # apply what the next reserve would have; the reaper covers a failure
                with self.conn_or_acquire() as client:
                    # A reservation from no lists: it only applies the acknowledgements.
                    ack_only = calls.reserve(self._vb_keys, lists=(), token="", acks=self._vb_acks)
                    Record(client).run(ack_only)
                self._vb_acks.clear()
            except Exception as exc:
                logger.debug("could not apply %d acks on close: %s", len(self._vb_acks), exc)
        super().close()


class Transport(kombu_redis.Transport):
    """The ``broker_transport`` of the library's apps."""

    Channel = Channel
    #: The worker's event loop, once registered (channels set timers on it).
    vb_loop: Any = None

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        self.vb_loop = loop
        super().register_with_event_loop(connection, loop)

    def _deliver(self, message: Any, queue: str) -> None:
        if not _is_envelope(message):
            logger.error("discarded a queue entry on %r that is not a task message", queue)
            return
        super()._deliver(message, queue)


class SentinelChannel(Channel, kombu_redis.SentinelChannel):
    """Our channel over kombu's Sentinel channel: kombu's ``_get_pool`` (the sentinels name
    the master on every connect), our consume loop, and connections that turn a failover
    reply into a reconnect (redis-py's own Sentinel connection does so for READONLY only)."""

    connection_class = SentinelFailoverConnection
    connection_class_ssl = SentinelFailoverSSLConnection  # type: ignore[assignment]  # kombu's own class


class SentinelTransport(Transport):
    """The ``broker_transport`` of the library's apps with ``REDIS_SENTINELS``.

    Transport options ``master_name`` and ``sentinel_kwargs`` (the sentinels' own
    credentials and TLS) are set by the app factory.
    """

    Channel = SentinelChannel
    default_port = 26379  # type: ignore[assignment]  # kombu's base declares None
