"""Worker processes for jobs: a pool whose workers die with their parent, run at a lower CPU
priority than the model, keep freed memory, and stop at once when a job is interrupted.

Process control only (signals, ``prctl``, ``nice``, ``mallopt``); what the workers do is the
job's (:mod:`vtviz.jobs.export`).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import torch


def _worker_init(parent: int) -> None:
    """Decode workers die with the exporter, however it ends (a kill -9 included): the kernel
    sends them SIGKILL when their parent dies (Linux), and a watchdog thread checks too. Both are
    set up first, so that a worker stuck in what follows still dies with the exporter."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the exporter's to handle
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a forked child inherits the CLI's handler
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()
    if os.getppid() != parent:  # the exporter died before the kernel was told
        os._exit(1)
    import cv2

    cv2.setNumThreads(1)  # (forked: already 1, see worker_pool)
    # one core per worker: the workers run beside each other and the model; a forked child must
    # set this before any torch work (its parent's OpenMP threads are not in it: as DataLoader's)
    torch.set_num_threads(1)
    _keep_freed_memory()
    try:
        os.nice(WORKER_NICENESS)
    except OSError:  # (not allowed here: the workers then compete with the model as equals)
        pass


#: How much lower than the exporter's the workers' CPU priority is (``nice``). The model's threads
#: meet at every layer, so a model thread that waits for a core stalls the others; the workers'
#: drawing can wait and fills the time the model leaves. On 2 cores, 2 workers, 256 photos, four
#: interleaved runs: +2 to +8% exported images per second against equal priority.
WORKER_NICENESS = 10


#: glibc ``mallopt`` parameters (``malloc.h``) and the workers' values: blocks under 64 MiB come
#: from the heap, and up to 256 MiB of freed heap stays with the process.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_WORKER_MALLOC = ((_M_MMAP_THRESHOLD, 64 << 20), (_M_TRIM_THRESHOLD, 256 << 20))


def _keep_freed_memory() -> None:
    """In a drawing worker: let glibc reuse freed memory instead of returning it to the system.
    By default every array over ~128 KiB (a photo, a stack of 16 overlays) is a fresh mapping
    whose pages the kernel faults in and zeroes again for each photo: ~10% of the drawing's CPU.
    Bounded (see :data:`_WORKER_MALLOC`); the worker's own process only, nothing elsewhere."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        for param, value in _WORKER_MALLOC:
            libc.mallopt(param, value)
    except (OSError, AttributeError):  # not glibc: the allocator's defaults
        pass


def pool_context(method: str | None = None) -> multiprocessing.context.BaseContext:
    """Forked workers (``method`` None), unless CUDA is initialised in this process (a forked child
    cannot use it): spawned ones. A forked worker starts at once, a spawned one imports torch
    (~2 s of CPU each: ~15% of the CPU of exporting 256 photos on 2 cores). Either way a worker
    is the exporter's own child, so it can follow the exporter's death."""
    return multiprocessing.get_context(method or ("spawn" if torch.cuda.is_initialized() else "fork"))


def worker_pool(workers: int, method: str | None = None) -> ProcessPoolExecutor:
    """The exporter's worker processes (:func:`pool_context`): in the exporter they decode
    inputs and draw, encode and write outputs. Forked ones are forked here, with OpenCV's thread pool emptied for
    the moment of the fork: a child that resizes a pool whose threads it did not inherit (its
    ``cv2.setNumThreads``) hangs; torch's threads are the child's to set (:func:`_worker_init`)."""
    import cv2

    context = pool_context(method)
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init,
                               initargs=(os.getpid(),))
    if context.get_start_method() == "fork":
        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            pool.submit(os.getpid)  # with fork, the pool forks all its workers at its first job
        finally:
            cv2.setNumThreads(threads)
    return pool


def stop_pool(pool: ProcessPoolExecutor, finished: bool) -> None:
    """Wait for a finished pool; stop an interrupted one now (queued work is dropped: files are
    atomic, and a rerun resumes)."""
    if finished:
        pool.shutdown(wait=True)
        return
    processes = list((getattr(pool, "_processes", None) or {}).values())
    # what the pool forgets at shutdown: its manager thread and the pipes' ends this process holds
    manager: threading.Thread | None = getattr(pool, "_executor_manager_thread", None)
    result_end = getattr(getattr(pool, "_result_queue", None), "_writer", None)
    call_end = getattr(getattr(pool, "_call_queue", None), "_reader", None)
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in processes:
        proc.kill()
    for proc in processes:
        proc.join(timeout=5)
    # A worker killed in the middle of sending a result leaves half a message, which the pool's
    # manager thread would wait for forever (and the interpreter joins that thread at exit):
    # with the workers gone, closing our end of the result pipe turns that wait into an
    # end-of-file error, after which the manager closes the job pipe's end itself (so that its
    # feeder thread, perhaps blocked sending a job to no one, stops too). Only if the manager
    # is stuck elsewhere is the job pipe's end closed here: closing it while the manager does
    # raised "Bad file descriptor" in one of the two.
    _close_quietly(result_end)
    if manager is not None:
        manager.join(timeout=1)
    if manager is None or manager.is_alive():
        _close_quietly(call_end)


def _close_quietly(conn: Any) -> None:
    """Close a pipe end (a ``multiprocessing`` connection, or None), ignoring one already closed."""
    if conn is not None:
        try:
            conn.close()
        except OSError:
            pass
