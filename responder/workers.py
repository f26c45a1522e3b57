"""The daemon's threads: the core's worker loops, and an executor for its timed jobs.

A ``Worker`` is one plain thread running one of the core's loops (read, process, send):
it runs its step while the step makes progress, then waits on its own event until it
is woken (a message journaled, a reply queued, a stop) or its idle time is up.

``JobThreads`` is the APScheduler executor of the timed work: each run of a job gets a
daemon thread of its own, so no job waits for a thread another holds (a hung plugin job
cannot delay the watchdog, nor another plugin's job). A run still going when the next
one is due makes that one skip: noted once in our log per overrun, instead of
APScheduler's warning at every tick.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog
from apscheduler.executors.base import BaseExecutor, run_job

if TYPE_CHECKING:
    from apscheduler.job import Job

log = structlog.get_logger("responder.daemon")

Step = Callable[[], bool]
"""One step of a loop: True when it did some work (run it again at once)."""


class Worker:
    """One of the core's loops on a daemon thread of its own (see the module docstring).

    ``guard`` runs each step (the daemon's error handling and heartbeat); ``idle`` says how
    long to wait for a wake-up when a step did nothing; ``first`` runs once on the thread
    before the first step (the send worker's recovery of interrupted sends). The loop
    ends once ``stopping`` is set; while ``paused`` is set it takes no step.
    """

    def __init__(
        self,
        name: str,
        step: Step,
        *,
        guard: Callable[[str, Step], bool],
        idle: Callable[[], float],
        stopping: threading.Event,
        paused: threading.Event,
        first: Step | None = None,
    ) -> None:
        self.name = name
        self._step = step
        self._guard = guard
        self._idle = idle
        self._stopping = stopping
        self._paused = paused
        self._first = first
        self._wake = threading.Event()
        self._busy = False
        self.thread = threading.Thread(target=self._run, name=f"responder-{name}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def wake(self) -> None:
        """Take a step now, or once more after the current one."""
        self._wake.set()

    @property
    def busy(self) -> bool:
        """Whether a step (or the first task) is under way."""
        return self._busy

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the loop to end; whether it did."""
        if self.thread.ident is not None:
            self.thread.join(max(timeout, 0.0))
        return not self.thread.is_alive()

    def _run(self) -> None:
        if self._first is not None:
            self._busy = True
            try:
                self._guard(self.name, self._first)
            finally:
                self._busy = False
        while not self._stopping.is_set():
            self._wake.clear()
            self._busy = True  # before the guard looks at ``paused``: see Daemon.reload
            try:
                worked = self._guard(self.name, self._step)
            finally:
                self._busy = False
            if worked or self._stopping.is_set():
                continue
            self._wake.wait(self._idle() if not self._paused.is_set() else None)


class JobThreads(BaseExecutor):
    """An APScheduler executor running each run of a job on a new daemon thread (see the
    module docstring). ``name`` prefixes the threads' names."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self._overrun: dict[str, float] = {}
        self._running: dict[str, threading.Thread] = {}

    def submit_job(self, job: Job, run_times: list[Any]) -> None:
        assert self._lock is not None, "this executor has not been started"
        with self._lock:
            if self._instances[job.id] >= job.max_instances:
                if job.id not in self._overrun:
                    self._overrun[job.id] = time.monotonic()
                    log.warning(
                        "job_overrun",
                        job=job.id,
                        executor=self.name,
                        action="the job's last run is still going: its runs are skipped "
                        "until it ends",
                    )
                return
            self._instances[job.id] += 1
            thread = threading.Thread(
                target=self._run,
                args=(job, run_times),
                name=f"responder-{self.name}:{job.id}",
                daemon=True,
            )
            self._running[job.id] = thread
        thread.start()

    def _do_submit_job(self, job: Job, run_times: list[Any]) -> None:  # pragma: no cover
        raise NotImplementedError("JobThreads.submit_job starts the thread itself")

    def _run(self, job: Job, run_times: list[Any]) -> None:
        try:
            events = run_job(job, job._jobstore_alias, run_times, self._logger.name)
        except BaseException as err:
            self._ended(job.id)
            self._run_job_error(job.id, err, err.__traceback__)
        else:
            self._ended(job.id)
            self._run_job_success(job.id, events)

    def _ended(self, job_id: str) -> None:
        assert self._lock is not None
        with self._lock:
            self._running.pop(job_id, None)
            began = self._overrun.pop(job_id, None)
        if began is not None:
            log.info("job_caught_up", job=job_id, late_by=round(time.monotonic() - began, 1))

    def running(self) -> list[str]:
        """The jobs with a run under way."""
        assert self._lock is not None
        with self._lock:
            return sorted(self._running)

    def join(self, timeout: float) -> list[str]:
        """Wait up to ``timeout`` seconds for the runs under way; the jobs still running."""
        deadline = time.monotonic() + timeout
        assert self._lock is not None
        with self._lock:
            threads = list(self._running.values())
        for thread in threads:
            thread.join(max(deadline - time.monotonic(), 0.0))
        return self.running()
