"""The process an isolated step runs in: a forkserver child that does not run the parent's
main script.

Python's multiprocessing makes each forkserver (or spawn) child import the parent's
`__main__` file first, as `__mp_main__`, so that functions defined there can be found by
name. A script that calls a planflow flow at its top level (`churn(n=500)`, as the README
shows), without `if __name__ == "__main__":` around it, then ran the whole flow again in
each isolated step's process: a second flow run on the server, failed at once ("An
attempt has been made to start a new process before the current process has finished its
bootstrapping phase"), and the step failed with only "its process exited with code 1".
An isolated step's child needs nothing of `__main__`: its function and inputs travel by
cloudpickle, which carries what `__main__` defines by value (isolation._payload), and its
entry point is planflow's. So its preparation leaves the main module out.
"""

from __future__ import annotations

import io
import os
from multiprocessing import popen_forkserver, reduction, spawn, util
from multiprocessing.context import ForkServerProcess, set_spawning_popen
from multiprocessing.forkserver import connect_to_new_process, read_signed
from typing import Any

MAIN_KEYS = ("init_main_from_path", "init_main_from_name")  # what makes a child import __main__


class _Popen(popen_forkserver.Popen):
    """popen_forkserver.Popen's launch (CPython 3.11), its preparation without MAIN_KEYS."""

    def _launch(self, process_obj: Any) -> None:
        prep_data = spawn.get_preparation_data(process_obj._name)
        for key in MAIN_KEYS:
            prep_data.pop(key, None)
        buf = io.BytesIO()
        set_spawning_popen(self)
        try:
            reduction.dump(prep_data, buf)
            reduction.dump(process_obj, buf)
        finally:
            set_spawning_popen(None)
        self.sentinel, w = connect_to_new_process(self._fds)
        parent_w = os.dup(w)  # the child's sign that its parent lives (as the original keeps it)
        self.finalizer = util.Finalize(self, util.close_fds, (parent_w, self.sentinel))
        with open(w, "wb", closefd=True) as f:
            f.write(buf.getbuffer())
        self.pid = read_signed(self.sentinel)


class StepProcess(ForkServerProcess):
    """A forkserver child that does not import the parent's `__main__` (module docstring)."""

    @staticmethod
    def _Popen(process_obj: Any) -> Any:  # noqa: N802 - multiprocessing's name
        return _Popen(process_obj)
