"""Import the analysis engine when a worker starts, not inside its first task.

numpy and scipy take ~1.5 s to import on a small VM. Imported lazily, that second lands on the
first analysis after every deploy, in every pool process separately (each child importing its
own copy). Imported in the worker's main process before the pool forks, it is paid once, at
start-up, and the children share the pages.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from celery import bootsteps

__all__ = ["WarmImportsStep"]

logger = logging.getLogger(__name__)

#: Modules every analysis needs; the host's own analyzer is still loaded on first use.
WARM_MODULES = ("vocalborn_tasks.analysis",)


class WarmImportsStep(bootsteps.Step):  # type: ignore[misc]
    """Worker bootstep: import :data:`WARM_MODULES` before the pool starts."""

    label = "vocalborn warm imports"

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        for name in WARM_MODULES:
            try:
                importlib.import_module(name)
            except ImportError as exc:  # the first task will report it properly
                logger.warning("could not pre-import %s: %s", name, exc)
