"""The task record: every key a task touches in Redis, its state machine, and its JSON.

One owner for what the caller and the worker both read and write, so the rules ("a final state
is never overwritten", "a reserved message is in ``unacked``", "an outcome and its
acknowledgement are one step") live in one place. The transitions are Lua scripts in
``record/lua`` (each loaded once with a shared prelude, see :mod:`.scripts`), and each is one
typed call of :mod:`.calls`: the only place their KEYS and ARGV are built (``record.run(
calls.begin(keys, ...))`` on :class:`Record` or :class:`AsyncRecord`):

========= ================================================== =================================
script    transition                                         called by
========= ================================================== =================================
submit    (none) -> queued: marker + message + wake-up       TaskManager.submit
claim     same, holding a practice record's in-flight slot   TaskManager.submit_audio_analysis
reserve   queued -> reserved (``unacked``), folds acks       worker transport (fetch)
begin     reserved -> STARTED (delivery count, revoke check) worker runtime
progress  STARTED/PROGRESS -> PROGRESS (never over final)    worker runtime
store     -> RETRY/SUCCESS/FAILURE/REVOKED + ack, one step   worker result backend
revoke    unfinished -> REVOKED (+ terminate a running copy) TaskManager.cancel
restore   reserved by a dead worker -> queued (reaper)       worker heartbeat
release   drop a claim or lock still held by its owner       sink claim, beat lock, alerts
lock      take or renew a lock                               beat scheduler
position  where a queued message waits (read only)           Monitor.get_task_position
purge     queued -> REVOKED 'purged', slot freed (batches)   Monitor.purge_queue (purge.py)
epoch     the server's epoch and clock (sets it if missing)  ResultReader (LOST vs NOT_FOUND)
take_name a worker's node name: one live holder              worker start (workers.py)
========= ================================================== =================================

Data *about* tasks that is not the record itself has its own owner: run statistics
(``stats.py``), alert state (``alerts.py``), beat's schedule lock (``worker/beat.py``) and the
Monitor's queue observations (``monitor.py``).

Neither this package nor anything it imports needs Celery: the caller side uses it with
``redis.asyncio``, the worker side with ``redis``.
"""

from __future__ import annotations

from . import calls
from .calls import AsyncRecord, Record
from .keys import PRIORITY_SEP, PRIORITY_STEPS, RecordKeys, owner_tag, queue_lists
from .meta import (
    FINAL_STATES,
    META_PREFIX,
    celery_meta,
    is_final_status,
    may_be_final,
    meta_status,
    read_meta,
    revoked_meta,
)
from .scripts import SCRIPT_NAMES, ScriptSet, load_script_files, script_header, script_source
from .task_ids import epoch_seconds, id_time, missing_state, new_task_id

__all__ = [
    "FINAL_STATES",
    "META_PREFIX",
    "PRIORITY_SEP",
    "PRIORITY_STEPS",
    "SCRIPT_NAMES",
    "AsyncRecord",
    "Record",
    "RecordKeys",
    "ScriptSet",
    "calls",
    "celery_meta",
    "epoch_seconds",
    "id_time",
    "is_final_status",
    "load_script_files",
    "may_be_final",
    "meta_status",
    "missing_state",
    "new_task_id",
    "owner_tag",
    "queue_lists",
    "read_meta",
    "revoked_meta",
    "script_header",
    "script_source",
]
