"""Outputs whose classes live in a module no other process can import, pickled by value.

Prefect runs a deployment's entrypoint (`flows/credit/flow.py:credit`) by loading the file
as a module named after it, `flow`, whose relative imports (`from . import steps`) then
load `flow.steps`. A model class defined there was pickled by reference, as
`flow.steps.Model`: a name that no other process (`planflow serve`, a run on another
machine) can import, so the served model stayed the old one ("No module named 'flow'").
Such modules (the project's own files, loaded under a name that Python's path finder,
searching this process's path without the folder the loader added, does not resolve to
the same file) are registered with cloudpickle to be pickled by value, as it does for
`__main__`: the class travels with the output.

    by_value_where_unimportable()   # before cloudpickle.dumps; cheap when nothing new was imported
"""

from __future__ import annotations

import importlib.machinery
import os
import sys
import sysconfig
import threading
from pathlib import Path
from types import ModuleType

import cloudpickle

_lock = threading.Lock()  # steps end on threads of their own: one look at a time
_checked: set[str] = set()  # top-level module names already judged
_modules_seen = 0  # len(sys.modules) at the last look


def by_value_where_unimportable(root: Path | None = None) -> list[str]:
    """Register for pickling by value every top-level module loaded from a file under
    `root` (default: the working folder, the project's in a worker's run) that Python's
    path finder would not import under its name; returns the names registered now."""
    global _modules_seen
    if len(sys.modules) == _modules_seen:  # nothing imported since the last look: the hot path
        return []
    with _lock:  # a step ending beside one that looks waits for its look (not pickled by reference meanwhile)
        seen = len(sys.modules)
        here = root or Path.cwd()
        folders = (str(here.absolute()) + os.sep, str(here.resolve()) + os.sep)  # no path resolved per module
        registered = []
        for name, module in list(sys.modules.items()):
            if "." in name or name in _checked or name == "__main__" or name in sys.stdlib_module_names:
                continue
            _checked.add(name)
            origin = getattr(module, "__file__", None)
            if origin and origin.startswith(folders) and _unimportable(name, module, origin, folders[1]):
                cloudpickle.register_pickle_by_value(module)
                registered.append(name)
        _modules_seen = seen
    return registered


def _installed_roots() -> tuple[str, ...]:
    """The folders installed code lives in (the standard library, site-packages, the
    interpreter's prefixes): never the project's own, wherever they are."""
    paths = sysconfig.get_paths()
    roots = [paths.get(key) for key in ("stdlib", "platstdlib", "purelib", "platlib")]
    roots += [sys.prefix, sys.base_prefix, sys.exec_prefix]
    return tuple(str(Path(root).resolve()) + os.sep for root in roots if root)


def _unimportable(name: str, module: ModuleType, origin: str, folder: str) -> bool:
    file = Path(origin).resolve()
    if not str(file).startswith(folder) or {"site-packages", "dist-packages"} & set(file.parts):
        return False  # not the project's own code (a virtual environment inside the project included)
    if str(file).startswith(_installed_roots()):
        return False  # an interpreter or environment inside the project's folder
    # What another process started in the project's folder searches: this process's path
    # without the folder Prefect's loader put there for an entrypoint, which it loads as a
    # package searching there (`submodule_search_locations`; the project's folder stays)
    spec = getattr(module, "__spec__", None)
    locations = list(getattr(spec, "submodule_search_locations", None) or [])
    added = {Path(locations[0]).resolve()} if locations and file.name != "__init__.py" else set()
    path = [
        p for p in sys.path if Path(p or ".").resolve() not in added or str(Path(p or ".").resolve()) + os.sep == folder
    ]
    try:
        found = importlib.machinery.PathFinder.find_spec(name, path)
    except (ImportError, ValueError):
        found = None
    return found is None or found.origin is None or Path(found.origin).resolve() != file
