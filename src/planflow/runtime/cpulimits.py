"""Native thread pools (BLAS, OpenMP) held to the CPUs in-process components declared.

A component declared `cpu=1` that calls BLAS or OpenMP code (numpy, scikit-learn)
would otherwise start as many native threads as the machine has cores, beside the
other components. threadpoolctl sets the limits; the two kinds of pool differ, and
this was checked with numpy's OpenBLAS and scikit-learn's libgomp:

- OpenMP's limit belongs to the calling thread (`omp_set_num_threads`): a component
  running as a thread of the flow's process gets exactly ceil(cpu) OpenMP threads.
- BLAS's (OpenBLAS, MKL, BLIS) is one setting for the whole process: components that
  are threads of one process cannot each have their own. While in-process components
  run, the process's BLAS limit is the largest ceil(cpu) among those running at that
  moment; when none runs it goes back to the library's own setting. So a `cpu=1`
  component running beside a `cpu=4` one may use up to 4 BLAS threads. A component
  that needs its own limit whatever runs beside it takes `isolation="process"`
  (isolation.py): its process is limited to its own declaration.

threadpoolctl lets only one "controlling" thread change a process-wide OpenBLAS
pool (others are silently ignored); the components' threads take turns under this
module's lock, releasing control after each change.

Finding the loaded libraries takes about 25 ms, as much as a Prefect task run costs, so it
is done again only when modules were imported since (a native library comes with one).
Native libraries loaded after a component started (a module imported inside the
component) are limited from the next component on.
"""

from __future__ import annotations

import math
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import threadpoolctl
from threadpoolctl import ThreadpoolController

# Read by native libraries when they load: a process of its own (isolation.py) sets them
# before the component's modules load, so that its libraries start with the limit.
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")


def threads_for(cpu: float) -> int:
    """The native threads a declaration allows: `cpu` rounded up, at least 1."""
    return max(1, math.ceil(cpu - 1e-9))


class BlasLimit:
    """The process-wide BLAS limit: the largest declaration among the components running."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: list[int] = []
        self._controller: ThreadpoolController | None = None
        self._modules = -1  # len(sys.modules) when the libraries were last looked up
        self._original: Any = None  # restores the libraries' own setting
        self._applied = 0

    @property
    def controller(self) -> ThreadpoolController | None:
        return self._controller

    def enter(self, threads: int) -> None:
        with self._lock:
            if not self._running and len(sys.modules) != self._modules:  # new imports: new libraries?
                self._modules = len(sys.modules)
                self._controller = ThreadpoolController()
            self._running.append(threads)
            self._apply()

    def exit(self, threads: int) -> None:
        with self._lock:
            self._running.remove(threads)
            if self._running:
                self._apply()
            elif self._original is not None:
                _release_control()
                self._original.restore_original_limits()
                _release_control()
                self._original, self._applied = None, 0

    def _apply(self) -> None:
        target = max(self._running)
        if target == self._applied or self._controller is None or not self._controller.lib_controllers:
            return
        _release_control()
        limiter = self._controller.limit(limits=target, user_api="blas")
        _release_control()
        if self._original is None:  # the first limit keeps the settings to restore
            self._original = limiter
        self._applied = target


def _release_control() -> None:
    """Let any thread set OpenBLAS's process-wide limit next (threadpoolctl >= 3.6 lets
    only the thread that set it first change it)."""
    controller = getattr(threadpoolctl, "OpenBLASController", None)
    clear = getattr(controller, "clear_controlling_thread", None)
    if clear is not None:
        clear(force=True)


_BLAS = BlasLimit()


@contextmanager
def limited(cpu: float) -> Iterator[int]:
    """Run the body with native thread pools limited for a component declaring `cpu`
    in this process (see the module's docstring); yields the thread count."""
    threads = threads_for(cpu)
    _BLAS.enter(threads)
    try:
        controller = _BLAS.controller
        openmp = None
        if controller is not None and any(lib.user_api == "openmp" for lib in controller.lib_controllers):
            openmp = controller.limit(limits=threads, user_api="openmp")
        try:
            yield threads
        finally:
            if openmp is not None:
                openmp.restore_original_limits()
    finally:
        _BLAS.exit(threads)
