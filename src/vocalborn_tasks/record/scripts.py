"""The record's Lua scripts: files in ``lua/``, each prefixed with ``lua/_prelude.lua``.

In front of the prelude goes a line of constants generated from Python (kombu's priority
list names, :data:`.keys.PRIORITY_SEP` and :data:`.keys.PRIORITY_STEPS`), so they are defined
once, not once per language.

Scripts are code: kept as files (so they are read, diffed and linted like code), loaded from
the package once per process, and run with EVALSHA (redis-py's ``Script`` loads them again
after a server restart forgot them). The few rules both languages need (the final states,
kombu's priority-list names) are written into the prelude from their Python definitions, so
each has one.

Callers do not run scripts by name: each transition is a typed call in :mod:`.calls`.
"""

from __future__ import annotations

import functools
import hashlib
from importlib.resources import files
from typing import Any, Final

from .keys import PRIORITY_SEP, PRIORITY_STEPS
from .meta import FINAL_STATES

__all__ = [
    "SCRIPT_NAMES",
    "ScriptSet",
    "load_script_files",
    "script_header",
    "script_sha",
    "script_source",
]

SCRIPT_NAMES: Final = (
    "begin",
    "claim",
    "epoch",
    "lock",
    "position",
    "progress",
    "purge",
    "release",
    "reserve",
    "restore",
    "retry",
    "revoke",
    "store",
    "submit",
    "take_name",
)


def _lua_string(text: str) -> str:
    """A Lua string literal (three-digit decimal escapes: safe for any ASCII character)."""
    return "'" + "".join(c if c.isalnum() else f"\\{ord(c):03d}" for c in text) + "'"


@functools.cache
def _generated_prelude() -> str:
    finals = ", ".join(f"{state} = true" for state in sorted(FINAL_STATES))
    steps = ", ".join(str(step) for step in PRIORITY_STEPS)
    return (
        f"local FINAL = {{{finals}}}\n"
        f"local PRIORITY_SEP = {_lua_string(PRIORITY_SEP)}\n"
        f"local PRIORITY_STEPS = {{{steps}}}\n"
    )


def _lua_file(name: str) -> str:
    return files(__package__).joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


@functools.cache
def script_source(name: str) -> str:
    """The full source of script ``name`` (generated constants and prelude included)."""
    if name not in SCRIPT_NAMES:
        raise KeyError(f"no record script named {name!r}")
    return _generated_prelude() + _lua_file("_prelude") + "\n" + _lua_file(name)


@functools.cache
def script_sha(name: str) -> str:
    """The SHA1 the server knows script ``name`` by (for EVALSHA)."""
    return hashlib.sha1(script_source(name).encode("utf-8")).hexdigest()


def load_script_files() -> None:
    """Read every script's files now (blocking: off the event loop), so the first run of each
    finds its source and SHA ready instead of reading package files then."""
    for name in SCRIPT_NAMES:
        script_sha(name)


def script_header(name: str) -> str:
    """The script's own file, without the prelude (its header documents KEYS and ARGV)."""
    if name not in SCRIPT_NAMES:
        raise KeyError(f"no record script named {name!r}")
    return _lua_file(name)


class ScriptSet:
    """The record's scripts registered on one client (sync ``redis`` or ``redis.asyncio``).

    The record's own runners use it; tests of the scripts themselves do too. Everything else
    calls a transition of :mod:`.calls`.
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self._scripts: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = self.client.register_script(script_source(name))
        return script
