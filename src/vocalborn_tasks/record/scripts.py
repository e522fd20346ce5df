"""The record's Lua scripts: files in ``lua/``, each prefixed with ``lua/_prelude.lua``.

Scripts are code: kept as files (so they are read, diffed and linted like code), loaded from
the package once per process, and run with EVALSHA (redis-py's ``Script`` loads them again
after a server restart forgot them).
"""

from __future__ import annotations

import functools
from importlib.resources import files
from typing import Any, Final

__all__ = ["SCRIPT_NAMES", "ScriptSet", "script_source"]

SCRIPT_NAMES: Final = (
    "begin",
    "claim",
    "lock",
    "position",
    "progress",
    "release",
    "reserve",
    "restore",
    "revoke",
    "store",
    "submit",
    "take_name",
)


@functools.cache
def script_source(name: str) -> str:
    """The full source of script ``name`` (prelude included)."""
    if name not in SCRIPT_NAMES:
        raise KeyError(f"no record script named {name!r}")
    lua = files(__package__).joinpath("lua")
    prelude = lua.joinpath("_prelude.lua").read_text(encoding="utf-8")
    return prelude + "\n" + lua.joinpath(f"{name}.lua").read_text(encoding="utf-8")


class ScriptSet:
    """The record's scripts registered on one client (sync ``redis`` or ``redis.asyncio``).

    ``scripts["store"](keys=[...], args=[...])`` runs it; a pipeline can be passed as
    ``client=`` like with any redis-py ``Script``.
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self._scripts: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = self.client.register_script(script_source(name))
        return script
