"""Import the analysis engine when a worker starts, not inside its first task, and keep the
pages the pool processes inherit shared.

numpy and scipy take ~1.5 s to import on a small VM. Imported lazily, that second lands on the
first analysis after every deploy, in every pool process separately (each child importing its
own copy). Imported in the worker's main process before the pool forks, it is paid once, at
start-up, and the children share the pages.

Sharing them takes more than importing first. A child shares its parent's pages only until it
writes to them, and CPython's cyclic garbage collector writes to every object it examines (its
``gc_refs`` field): the first full collection in a child copied every page holding an object
it inherited, ~30 MiB of private memory per pool process (measured with
``/proc/PID/smaps_rollup``: one child at 23 MiB private dirty, the other, after a full
collection, at 53). :func:`gc.freeze` moves the objects alive at that moment to a generation
the collector never examines: called in the main process once the imports are done, and in each
child as it starts (for the objects made between the step and the fork), it keeps those pages
shared. Frozen objects are still freed when their reference count drops to zero; only a cycle
among them would be kept, and none of them is garbage when frozen (a collection runs first).
"""

from __future__ import annotations

import gc
import importlib
import logging
from typing import Any

from celery import bootsteps
from celery.signals import worker_process_init

__all__ = ["WarmImportsStep", "freeze_inherited_objects"]

logger = logging.getLogger(__name__)

#: Modules every analysis needs; the host's own analyzer is still loaded on first use.
WARM_MODULES = ("vocalborn_tasks.analysis",)


def freeze_inherited_objects(**_: Any) -> None:
    """Freeze every object alive now (see the module docstring).

    Connected to ``worker_process_init``, so each pool process freezes what it inherited
    before its first collection could touch it. No collection first: in a child that would
    examine (and so copy) the objects the main process made after its own freeze.
    """
    gc.freeze()


class WarmImportsStep(bootsteps.Step):  # type: ignore[misc]
    """Worker bootstep: import :data:`WARM_MODULES` before the pool starts, then freeze them."""

    label = "vocalborn warm imports"

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        for name in WARM_MODULES:
            try:
                importlib.import_module(name)
            except ImportError as exc:  # the first task will report it properly
                logger.warning("could not pre-import %s: %s", name, exc)
        gc.collect()  # what is garbage now must not be frozen
        freeze_inherited_objects()
        worker_process_init.connect(
            freeze_inherited_objects, weak=False, dispatch_uid="vocalborn-freeze-inherited"
        )
