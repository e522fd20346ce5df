"""Celery's Redis result backend, storing a state in one round trip instead of two.

Celery stores each state with a GET (to avoid overwriting a SUCCESS) followed by a MULTI of
SETEX and PUBLISH. On loopback a round trip costs about as much as the rest of a short task,
so this backend does the same check, write and publish in one Lua script, and in the same call
marks the library's submit marker as done when the state is final (which is what lets the
manager tell an expired result from a queued task). It also never lets a late write replace a
final state: a cancelled task stays REVOKED even if a straggling copy of it finishes. The
statistics of the run that produced the state travel in the same round trip (see stats.py).
"""

from __future__ import annotations

from typing import Any

from celery import states
from celery.backends.redis import RedisBackend

from .stats import recorder_of

__all__ = ["VocalbornRedisBackend"]

_FINAL = (states.SUCCESS, states.FAILURE, states.REVOKED)

#: KEYS: meta key, submit marker. ARGV: encoded meta, expiry seconds (0: none), state, and
#: optionally the run's statistics: a JSON list of commands (stats.py), applied first (a run
#: that happened is counted even when its state is not stored).
_STORE_SCRIPT = """
if ARGV[4] then
  for _, command in ipairs(cjson.decode(ARGV[4])) do redis.call(unpack(command)) end
end
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, decoded = pcall(cjson.decode, cur)
  if ok and type(decoded) == 'table' then
    local s = decoded['status']
    if s == 'SUCCESS' or s == 'FAILURE' or s == 'REVOKED' then return 0 end
  end
end
local expires = tonumber(ARGV[2])
if expires and expires > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', expires)
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
if (ARGV[3] == 'SUCCESS' or ARGV[3] == 'FAILURE' or ARGV[3] == 'REVOKED')
    and redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('HSET', KEYS[2], 'done', ARGV[3])
end
return 1
"""


class VocalbornRedisBackend(RedisBackend):  # type: ignore[misc]
    """The result backend of the library's apps (``app.backend_cls``)."""

    _store_script: Any = None

    def _store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: Any = None,
        request: Any = None,
        **kwargs: Any,
    ) -> Any:
        meta = self._get_result_meta(
            result=result, state=state, traceback=traceback, request=request
        )
        task_id = task_id.decode() if isinstance(task_id, bytes) else str(task_id)
        meta["task_id"] = task_id
        value = self.encode(meta)
        expires = self.failure_expires if state == states.FAILURE else self.expires
        marker = self.app.settings.key("task", task_id)
        self.ensure(
            self._store,
            (self.get_key_for_task(task_id), marker, value, expires, state, task_id, result),
        )
        return result

    def _store(
        self, key: Any, marker: str, value: Any, expires: Any, state: str, task_id: str, result: Any
    ) -> None:
        client = self.client  # after a fork the backend has a new one
        if self._store_script is None:
            self._store_script = client.register_script(_STORE_SCRIPT)
        seconds = (
            int(expires.total_seconds()) if hasattr(expires, "total_seconds") else int(expires or 0)
        )
        args = [value, seconds, state]
        recorder = recorder_of(self.app)
        stats = recorder.finish_ops(task_id, state, result) if recorder is not None else None
        if stats is not None:  # the run's statistics ride along: one round trip for both
            args.append(stats)
        self._store_script(keys=[key, marker], args=args, client=client)
