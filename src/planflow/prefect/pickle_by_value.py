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
from pathlib import Path

import cloudpickle

_checked: set[str] = set()  # top-level module names already judged
_modules_seen = 0  # len(sys.modules) at the last look


def by_value_where_unimportable(root: Path | None = None) -> list[str]:
    """Register for pickling by value every top-level module loaded from a file under
    `root` (default: the working folder, the project's in a worker's run) that Python's
    path finder would not import under its name; returns the names registered now."""
    global _modules_seen
    if len(sys.modules) == _modules_seen:
        return []
    _modules_seen = len(sys.modules)
    here = root or Path.cwd()
    folders = (str(here.absolute()) + os.sep, str(here.resolve()) + os.sep)  # no path resolved per module
    registered = []
    for name, module in list(sys.modules.items()):
        if "." in name or name in _checked or name == "__main__":
            continue
        _checked.add(name)
        origin = getattr(module, "__file__", None)
        if origin and origin.startswith(folders) and _unimportable(name, origin, folders[1]):
            cloudpickle.register_pickle_by_value(module)
            registered.append(name)
    return registered


def _unimportable(name: str, origin: str, folder: str) -> bool:
    file = Path(origin).resolve()
    if not str(file).startswith(folder) or {"site-packages", "dist-packages"} & set(file.parts):
        return False  # not the project's own code (a virtual environment inside the project included)
    # What another process started in the project's folder searches: this process's path
    # without the module's own folder, which Prefect's loader put there for the entrypoint
    # (the project's folder itself stays)
    own = file.parent
    path = [p for p in sys.path if Path(p or ".").resolve() != own or str(own) + os.sep == folder]
    try:
        found = importlib.machinery.PathFinder.find_spec(name, path)
    except (ImportError, ValueError):
        found = None
    return found is None or found.origin is None or Path(found.origin).resolve() != file
