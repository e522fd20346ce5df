"""Every private Celery/kombu name the worker side borrows is declared, and still exists.

An upgrade that renames one fails here, not in production; pyproject pins the tested range.
The borrowed names are found in our source (issue 16: derive, don't list), then each is checked
against ``celery_private.BORROWED``, and each entry of that table against the installed
Celery and kombu:

* every ``_name`` attribute our code reads or writes that our code does not define itself;
* every ``_name`` a class of ours overrides or assigns on ``self`` that its Celery/kombu base
  class already has (instance attributes included: found in the base's source);
* every name imported from Celery or kombu, and every attribute used on one of their modules,
  unless the module is in ``PUBLIC_MODULES`` and the name has no leading underscore.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import re
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from vocalborn_tasks.worker.celery_private import BORROWED, PRIVATE_NAMES, PUBLIC_MODULES

SRC = Path(__file__).resolve().parents[2] / "src" / "vocalborn_tasks"
FOREIGN = ("celery", "kombu")


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _is_foreign(module: str) -> bool:
    return module.split(".")[0] in FOREIGN


def _resolve(module: str, dotted: str) -> object:
    obj: object = importlib.import_module(module)
    for part in dotted.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            obj = importlib.import_module(f"{obj.__name__}.{part}")  # type: ignore[attr-defined]
    return obj


@functools.cache
def _class_source(cls: type) -> str:
    """A class's source text ("" where there is none); read once per class (inspect re-parses
    the whole module each time, and the same bases come up for many names)."""
    try:
        return inspect.getsource(cls)
    except (OSError, TypeError):
        return ""


def _instance_attribute(owner: type, name: str) -> bool:
    """Whether a class of the MRO assigns ``self.<name>`` (an attribute set in ``__init__``)."""
    pattern = re.compile(rf"self\.{re.escape(name)}\s*(:[^=]*)?=[^=]")
    return any(pattern.search(_class_source(cls)) for cls in owner.__mro__)


def _has(owner: object, name: str) -> bool:
    """Whether ``owner`` has ``name``, as a class attribute or one its ``__init__`` sets."""
    return hasattr(owner, name) or (isinstance(owner, type) and _instance_attribute(owner, name))


@dataclass
class _Module:
    """What one source file of ours borrows, found by walking its syntax tree."""

    path: Path
    tree: ast.Module
    #: local name -> (foreign module, dotted name or "" for the module itself)
    imported: dict[str, tuple[str, str]] = field(default_factory=dict)


def _modules() -> list[_Module]:
    out = []
    for path in sorted(SRC.rglob("*.py")):
        mod = _Module(path, ast.parse(path.read_text(encoding="utf-8")))
        for node in ast.walk(mod.tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if _is_foreign(alias.name):
                        local = alias.asname or alias.name.split(".")[0]
                        target = alias.name if alias.asname else alias.name.split(".")[0]
                        mod.imported[local] = (target, "")
            elif isinstance(node, ast.ImportFrom) and node.module and _is_foreign(node.module):
                for alias in node.names:
                    mod.imported[alias.asname or alias.name] = (node.module, alias.name)
        out.append(mod)
    return out


def _chain(node: ast.expr) -> tuple[str, list[str]] | None:
    """``a.b.c`` -> ("a", ["b", "c"]); None for anything but a plain dotted name."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return node.id, parts[::-1]
    return None


def _locate(mod: _Module, node: ast.expr) -> tuple[str, str] | None:
    """(module, dotted name) of the Celery/kombu object ``node`` names in ``mod``, if any.

    Leading parts that are submodules are folded into the module: ``kombu_redis.QoS`` is
    ``("kombu.transport.redis", "QoS")``, ``state.active_requests`` is
    ``("celery.worker.state", "active_requests")``.
    """
    chain = _chain(node)
    if chain is None or chain[0] not in mod.imported:
        return None
    module, name = mod.imported[chain[0]]
    parts = ([name] if name else []) + chain[1]
    while parts:
        try:
            importlib.import_module(f"{module}.{parts[0]}")
        except ImportError:
            break
        module = f"{module}.{parts.pop(0)}"
    return module, ".".join(parts)


@functools.cache
def borrowed_in_source() -> frozenset[tuple[str, str, str]]:
    """Every borrowed name our source uses, as (kind, what, where)."""
    modules = _modules()
    found: set[tuple[str, str, str]] = set()
    # Names our own code defines: functions, classes, module and class attributes, and any
    # attribute it assigns, except on ``self`` in a subclass of Celery's or kombu's (there
    # the base may own it: checked below).
    ours: set[str] = set()
    foreign_classes: dict[ast.ClassDef, list[tuple[str, str, object]]] = {}
    for mod in modules:
        for node in ast.walk(mod.tree):
            if isinstance(node, ast.ClassDef):
                bases = []
                for base in node.bases:
                    located = _locate(mod, base)
                    if located is not None:
                        bases.append((*located, _resolve(*located)))
                if bases:
                    foreign_classes[node] = bases
    in_foreign: set[int] = set()
    for cls in foreign_classes:
        in_foreign.update(id(n) for n in ast.walk(cls))
    for mod in modules:
        for node in ast.walk(mod.tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                ours.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                ours.add(node.id)
            elif (
                isinstance(node, ast.Attribute)
                and isinstance(node.ctx, ast.Store)
                and not (
                    id(node) in in_foreign
                    and isinstance(node.value, ast.Name)
                    and node.value.id == "self"
                )
            ):
                ours.add(node.attr)
    # Overrides of, and assignments to, the base's own private names.
    for cls, bases in foreign_classes.items():
        defined = [
            n.name
            for n in cls.body
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        ]
        defined += [
            t.id
            for n in cls.body
            if isinstance(n, ast.Assign | ast.AnnAssign)
            for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
            if isinstance(t, ast.Name)
        ]
        defined += [
            n.attr
            for n in ast.walk(cls)
            if isinstance(n, ast.Attribute)
            and isinstance(n.ctx, ast.Store)
            and isinstance(n.value, ast.Name)
            and n.value.id == "self"
        ]
        for name in defined:
            owners = [(m, d) for m, d, base in bases if _is_private(name) and _has(base, name)]
            for module, dotted in owners:
                found.add(("override", f"{module}:{dotted}.{name}", cls.name))
            if not owners:
                ours.add(name)  # a name of our subclass that the base does not have
    for mod in modules:
        where = str(mod.path.relative_to(SRC))
        inner = {id(n.value) for n in ast.walk(mod.tree) if isinstance(n, ast.Attribute)}
        for node in ast.walk(mod.tree):
            # Imports from Celery and kombu.
            if isinstance(node, ast.ImportFrom) and node.module and _is_foreign(node.module):
                for alias in node.names:
                    module, dotted = node.module, alias.name
                    if inspect.ismodule(_resolve(module, dotted)):
                        module, dotted = f"{module}.{dotted}", ""
                    found.add(("import", f"{module}:{dotted}", where))
                    private = any(_is_private(p) for p in f"{module}.{dotted}".split("."))
                    if dotted and (private or module not in PUBLIC_MODULES):
                        found.add(("declare", f"{module}:{dotted}", where))
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if _is_foreign(alias.name):
                        found.add(("import", f"{alias.name}:", where))
            if not isinstance(node, ast.Attribute):
                continue
            # Private attributes not defined by our code.
            if _is_private(node.attr) and node.attr not in ours:
                found.add(("attribute", node.attr, where))
            # Names used on Celery's and kombu's modules (the whole dotted chain only).
            if id(node) in inner:
                continue
            located = _locate(mod, node)
            if located is None:
                continue
            module, dotted = located
            found.add(("import", f"{module}:{dotted}", where))
            private = any(_is_private(p) for p in f"{module}.{dotted}".split("."))
            if dotted and (private or module not in PUBLIC_MODULES):
                found.add(("declare", f"{module}:{dotted}", where))
    return frozenset(found)


def _declared(module: str, dotted: str) -> bool:
    """Whether ``module:dotted`` is in the table (or a prefix of it, for public attributes)."""
    parts = dotted.split(".")
    names = set(PRIVATE_NAMES)
    for n in range(len(parts), 0, -1):
        if (module, ".".join(parts[:n])) in names:
            # A declared object covers its public attributes, never its private ones.
            return not any(_is_private(p) for p in parts[n:])
    return False


def test_every_borrowed_name_in_the_source_is_declared() -> None:
    attributes = {b.attribute for b in BORROWED}
    missing = []
    for kind, what, where in sorted(borrowed_in_source()):
        if kind == "attribute" and what not in attributes:
            missing.append(f"{where}: ._{what.lstrip('_')} (a private attribute)")
        elif kind in ("override", "declare"):
            module, dotted = what.split(":")
            if not _declared(module, dotted):
                missing.append(f"{where}: {module}.{dotted} ({kind})")
    assert not missing, "borrowed but not in celery_private.BORROWED:\n" + "\n".join(missing)


def test_everything_imported_from_celery_and_kombu_exists() -> None:
    for kind, what, _where in sorted(borrowed_in_source()):
        if kind == "import":
            module, dotted = what.split(":")
            if dotted:
                _resolve(module, dotted)
            else:
                importlib.import_module(module)


def test_the_search_finds_what_we_know_we_borrow() -> None:
    """The derivation itself works: names of each kind it must find (a guard, not the list)."""
    found = borrowed_in_source()
    kinds = {(kind, what) for kind, what, _ in found}
    assert ("attribute", "_queue_cycle") in kinds
    assert ("attribute", "_delivered") in kinds
    assert ("override", "kombu.transport.redis:Channel._in_poll") in kinds
    assert ("override", "celery.beat:Scheduler._heap") in kinds
    assert ("override", "kombu.transport.redis:Channel._brpop_start") in kinds
    assert ("declare", "celery.worker.state:active_requests") in kinds


@pytest.mark.parametrize("entry", BORROWED, ids=lambda b: f"{b.module}.{b.name}")
def test_declared_name_exists(entry: object) -> None:
    module, dotted = entry.module, entry.name  # type: ignore[attr-defined]
    owner: object = importlib.import_module(module)
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if i == len(parts) - 1 and isinstance(owner, type):
            assert _has(owner, part), f"{module}.{dotted}: {part} is gone"
            return
        assert hasattr(owner, part), f"{module}.{dotted}: {part} is gone"
        owner = getattr(owner, part)


def test_every_declared_name_is_used() -> None:
    """The table keeps no name we stopped using (a stale entry would hide real drift)."""
    private = SRC / "worker" / "celery_private.py"
    own = private.read_text(encoding="utf-8")
    own = own[: own.index("BORROWED: tuple")] + own[own.index("PRIVATE_NAMES: tuple") :]
    text = own + "\n".join(p.read_text(encoding="utf-8") for p in SRC.rglob("*.py") if p != private)
    code = "\n".join(line.split("#")[0] for line in text.splitlines())  # not in comments
    unused = [
        f"{b.module}.{b.name}"
        for b in BORROWED
        if not b.implicit and not re.search(rf"\b{re.escape(b.attribute)}\b", code)
    ]
    assert not unused, unused


def test_copied_constants_are_kombus() -> None:
    # record.keys copies them so the caller side (Monitor) never imports kombu.
    from kombu.transport.redis import Channel

    from vocalborn_tasks.record.keys import PRIORITY_SEP, PRIORITY_STEPS, RecordKeys

    assert Channel.unacked_key == RecordKeys().unacked
    assert Channel.unacked_index_key == RecordKeys().unacked_index
    assert Channel.sep == PRIORITY_SEP
    assert tuple(Channel.priority_steps) == (0, *PRIORITY_STEPS)
    assert RecordKeys.queue_lists("q")[1:] == [f"q{Channel.sep}{s}" for s in PRIORITY_STEPS]


#: Methods we override or call with these parameters: a changed signature breaks us.
SIGNATURES = {
    ("kombu.transport.redis", "Channel._brpop_start"): ["self", "timeout"],
    ("kombu.transport.redis", "Channel._brpop_read"): ["self", "options"],
    ("kombu.transport.redis", "Channel._put"): ["self", "queue", "message", "kwargs"],
    ("kombu.transport.redis", "Channel._do_restore_message"): [
        "self",
        "payload",
        "exchange",
        "routing_key",
        "pipe",
        "leftmost",
    ],
    ("kombu.transport.redis", "QoS.append"): ["self", "message", "delivery_tag"],
    ("kombu.transport.redis", "QoS.ack"): ["self", "delivery_tag"],
    ("kombu.transport.redis", "QoS.restore_unacked"): ["self", "client"],
    ("celery.backends.redis", "RedisBackend._store_result"): [
        "self",
        "task_id",
        "result",
        "state",
        "traceback",
        "request",
        "kwargs",
    ],
}


@pytest.mark.parametrize(("where", "params"), list(SIGNATURES.items()))
def test_private_signature(where: tuple[str, str], params: list[str]) -> None:
    module, dotted = where
    obj: object = importlib.import_module(module)
    for part in dotted.split("."):
        obj = getattr(obj, part)
    assert callable(obj)
    assert list(inspect.signature(obj).parameters) == params


def test_success_log_line_carries_the_return_value_by_name() -> None:
    # worker/result_logging.py hides the result by replacing this argument of the record.
    from celery.app import trace

    assert "%(return_value)s" in trace.LOG_SUCCESS


def test_installed_celery_and_kombu_are_the_pinned_range() -> None:
    # pyproject pins what CI tests; an install outside it is untested (issue 10, item 6).
    from importlib.metadata import requires

    wanted = {
        Requirement(r).name: Requirement(r)
        for r in requires("vocalborn-tasks") or []
        if "extra ==" not in r
    }
    for name in ("celery", "kombu"):
        assert name in wanted, f"{name} is not pinned in pyproject"
        assert wanted[name].specifier.contains(version(name)), (name, version(name))


def test_failure_expires_is_there() -> None:
    # Celery 5.5 had no failure_expires: a failing task never reached FAILURE with it.
    from vocalborn_tasks.config import TaskSettings
    from vocalborn_tasks.worker.celery_private import result_expiry
    from vocalborn_tasks.worker.factory import create_celery_app

    app = create_celery_app(TaskSettings(redis_url="redis://127.0.0.1:1"))
    assert result_expiry(app.backend, "FAILURE") is not None
    assert result_expiry(app.backend, "SUCCESS") is not None


def test_expected_failure_line_is_told_by_its_description() -> None:
    # worker/result_logging.py drops Celery's line for a task's ``throws`` by this description.
    from celery.app import trace

    assert trace.log_policy_expected.description == "raised expected"
    assert "%(description)s" in trace.log_policy_expected.format
