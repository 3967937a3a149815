"""CPU-heavy work off the event loop: a solver or vectorised scoring must not stall health checks.

A service's calls, health checks and consumers all share one event loop; a function that computes
for a second inline holds every one of them for that second (Kubernetes probes time out, other
calls' latencies jump). `CpuPool.run(fn, *args)` runs it elsewhere and awaits the result.

- Processes (the default) for pure-Python work, which holds the GIL: a thread would still take the
  GIL from the loop. Workers are started with `spawn` (or `forkserver`), never `fork`: fork copies
  only the calling thread into the child, while grpc's C core, NATS, SQLite and the loop run other
  threads and hold locks and file descriptors; the child gets those locks held forever (grpc does
  not support fork in an asyncio server) and shares the parent's sockets and epoll. A spawned worker
  is a fresh interpreter that imports just what the function needs.
- Threads (`threads=True`) for work that releases the GIL (NumPy, OR-Tools, SciPy): no pickling, no
  worker start-up, shared memory. A thread cannot be interrupted: close() lets a running job finish.

With processes, `fn` must be a module-level function (workers import it by name) and its arguments
and result must pickle; a lambda or a nested function is refused at once. Keep arguments compact
(arrays, tuples), not ORM objects or sessions.

`max_workers` defaults to 1: on two cores, one for the loop and one spare. Workers start on the
first call, not at import. `close()` cancels queued jobs and terminates running workers, so a
shutdown never waits for a long solve; callers then get `CpuPoolClosed`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import multiprocessing
import signal
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Literal, ParamSpec, TypeVar

log = logging.getLogger("alliance.cpu")

P = ParamSpec("P")
T = TypeVar("T")


class CpuPoolClosed(RuntimeError):
    """The pool closed (shutdown) before this job could finish."""


class CpuPool:
    def __init__(
        self,
        max_workers: int = 1,
        *,
        threads: bool = False,
        start_method: Literal["spawn", "forkserver"] = "spawn",
        name: str = "cpu",
    ) -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self.max_workers = max_workers
        self.threads = threads
        self.start_method = start_method
        self.name = name
        self._executor: Executor | None = None
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """fn(*args, **kwargs) in a worker; its exception, if any, is raised here.

        Cancelling the caller cancels a job still queued; a job already running runs to its end
        (its result is discarded)."""
        if self._closed:
            raise CpuPoolClosed(f"{self.name} pool is closed")
        if not self.threads and "<" in getattr(fn, "__qualname__", ""):
            # Caught here with a clear message instead of a PicklingError from the feeder thread.
            raise TypeError(f"{fn.__qualname__} must be a module-level function: worker processes import it by name")
        executor = self._executor or self._start()
        job: Future[T] = executor.submit(functools.partial(fn, *args, **kwargs))
        try:
            return await asyncio.wrap_future(job)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._closed and job.cancelled() and not (task is not None and task.cancelling()):
                raise CpuPoolClosed(f"{self.name} pool closed before the job started") from None
            raise
        except BrokenProcessPool as error:
            if self._closed:
                raise CpuPoolClosed(f"{self.name} pool closed while the job ran") from error
            # A worker died (OOM killer, a crash in native code): this executor is unusable for
            # good. Forget it so the next call starts a fresh one instead of failing for ever.
            if self._executor is executor:
                self._executor = None
                executor.shutdown(wait=False, cancel_futures=True)
            log.error("cpu worker died", extra={"pool": self.name, "function": getattr(fn, "__qualname__", "?")})
            raise

    def _start(self) -> Executor:
        if self.threads:
            self._executor = ThreadPoolExecutor(self.max_workers, thread_name_prefix=self.name)
        else:
            self._executor = ProcessPoolExecutor(
                self.max_workers,
                mp_context=multiprocessing.get_context(self.start_method),
                initializer=_worker_init,
            )
        return self._executor

    def close(self) -> None:
        """Cancel queued jobs and stop the workers now; never waits for a running job (idempotent)."""
        self._closed = True
        executor, self._executor = self._executor, None
        if executor is None:
            return
        processes = []
        if isinstance(executor, ProcessPoolExecutor):
            # Private (pid -> Process) in 3.11-3.13; shutdown() forgets it, so read it first.
            processes = list((getattr(executor, "_processes", None) or {}).values())
        executor.shutdown(wait=False, cancel_futures=True)
        # ProcessPoolExecutor has no way to stop a running job before Python 3.14
        # (terminate_workers). Without this, shutdown and even interpreter exit wait for the job.
        # Terminating a worker makes the executor fail what was running with BrokenProcessPool,
        # which run() reports as CpuPoolClosed.
        for process in processes:
            if process.is_alive():
                process.terminate()


def _worker_init() -> None:
    # Ctrl-C reaches the whole process group: a worker must not die of KeyboardInterrupt and hand it
    # back as a job's "result" (it would escape into the event loop). The parent decides shutdown
    # and close() terminates the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
