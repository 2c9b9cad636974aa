"""Where self-training's independent pieces of work run: one after another in this process (the default,
as before), or as Ray tasks spread over a cluster (``pip install 'semiseg[ray]'``).

Why a layer of its own: the pipeline decides *what* is independent (the k fold models of a round, the
shards of a round's pseudo-labelling) and waits where the method needs every result (the selection);
an executor decides only *where* each piece runs and with which resources. The pipeline's tasks are
resumable: each writes its outputs atomically (temporary name, then rename) and skips what is finished,
so a retry after a killed worker, or a restart of the whole command, redoes nothing finished. That is
what lets the Ray executor simply retry a task whose worker died (``max_retries``).
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

from tqdm import tqdm

EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class Task:
    """One call ``fn(*args, **kwargs)``; ``name`` is what progress lines and timings call it."""

    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    name: str = ""


@dataclass(frozen=True)
class Timing:
    """A finished task's wall and CPU time inside its worker (CPU well under wall: the task waited for
    a core), and when the driver saw it finish (seconds after its batch was submitted: the difference
    to ``seconds`` is queueing, scheduling and worker start)."""

    name: str
    seconds: float
    finished_after: float
    cpu_seconds: float


class Executor(Protocol):
    """Runs independent tasks and returns their results in the tasks' order."""

    distributed: bool  # tasks run in other processes (their own progress bars would interleave)
    timings: list[Timing]

    def shard_count(self, n_cases: int) -> int:
        """Into how many shards to split ``n_cases`` cases of pseudo-labelling."""
        ...

    def run(self, tasks: Sequence[Task], progress: bool = True, desc: str = "tasks") -> list[Any]:
        ...


@dataclass
class InProcessExecutor:
    """Each task in this process, in order: exactly what self-training did before executors existed
    (one pseudo-labelling shard holding every case, so the k models are loaded once per round)."""

    distributed: bool = False
    timings: list[Timing] = field(default_factory=list)

    def shard_count(self, n_cases: int) -> int:
        return 1

    def run(self, tasks: Sequence[Task], progress: bool = True, desc: str = "tasks") -> list[Any]:
        out, start = [], time.perf_counter()
        for t in tasks:
            t0, c0 = time.perf_counter(), time.process_time()
            out.append(t.fn(*t.args, **t.kwargs))
            now = time.perf_counter()
            self.timings.append(Timing(t.name, now - t0, now - start, time.process_time() - c0))
        return out

    def __enter__(self) -> "InProcessExecutor":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


def _timed_call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], threads: int) -> tuple[Any, float, float]:
    """The body of every Ray task: torch gets the task's CPU share as threads (not the node's core
    count, which would oversubscribe a node running several tasks), and the time is measured inside."""
    from semiseg.engine.threads import apply_threads

    apply_threads(threads)
    t0, c0 = time.perf_counter(), time.process_time()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - t0, time.process_time() - c0


def import_ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise ImportError("the Ray executor needs Ray: pip install 'semiseg[ray]' (or pip install 'ray>=2.9')") from e
    return ray


@dataclass
class RayExecutor:
    """Each task a Ray task asking for ``cpus_per_task`` CPUs and ``gpus_per_task`` GPUs (fractions
    share a GPU); a task whose worker dies is retried up to ``max_retries`` times. Exceptions the
    task raises itself are not retried (a bug or a bad input would fail again): they reach the caller
    once every other task of the batch has finished, so their work is on disk for the next attempt.

    ``address``: None starts a local Ray instance (``num_cpus`` caps it), ``"auto"`` joins the cluster
    this machine belongs to, ``"ray://head:10001"`` connects a client. An already initialised Ray
    (a notebook, a test) is used as it is, and left running."""

    address: str | None = None
    cpus_per_task: float = 1.0
    gpus_per_task: float = 0.0
    max_retries: int = 3
    cases_per_shard: int = 10
    num_cpus: int | None = None
    distributed: bool = True
    timings: list[Timing] = field(default_factory=list)
    _started: bool = field(default=False, init=False, repr=False)  # this executor started Ray, so it stops it

    def __post_init__(self) -> None:
        if self.cpus_per_task <= 0 or self.gpus_per_task < 0:
            raise ValueError(f"--cpus-per-task must be > 0 and --gpus-per-task >= 0, got {self.cpus_per_task}, {self.gpus_per_task}")
        if self.cases_per_shard < 1:
            raise ValueError(f"--cases-per-shard must be >= 1, got {self.cases_per_shard}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")

    def shard_count(self, n_cases: int) -> int:
        return max(1, math.ceil(n_cases / self.cases_per_shard))

    def _ray(self) -> Any:
        ray = import_ray()
        if not ray.is_initialized():
            ray.init(address=self.address, num_cpus=self.num_cpus if self.address is None else None,
                     include_dashboard=False, log_to_driver=True)
            self._started = True
        return ray

    def run(self, tasks: Sequence[Task], progress: bool = True, desc: str = "tasks") -> list[Any]:
        if not tasks:
            return []
        ray = self._ray()
        remote = ray.remote(_timed_call)
        threads = max(1, int(self.cpus_per_task))
        refs, t0, names = [], time.perf_counter(), {}
        for t in tasks:
            opts = remote.options(num_cpus=self.cpus_per_task, num_gpus=self.gpus_per_task, max_retries=self.max_retries,
                                  retry_exceptions=False, name=t.name or getattr(t.fn, "__name__", "task"))
            ref = opts.remote(t.fn, t.args, t.kwargs, threads)
            refs.append(ref)
            names[ref] = t.name
        results: dict[Any, Any] = {}
        errors: list[BaseException] = []
        pending = list(refs)
        with tqdm(total=len(refs), desc=f"ray: {desc}", unit="task", disable=not progress) as bar:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                ref = done[0]
                try:
                    value, seconds, cpu = ray.get(ref)
                except ray.exceptions.RayTaskError as e:  # the task raised: its own exception, not Ray's wrapper
                    errors.append(e.as_instanceof_cause())
                except ray.exceptions.RayError as e:  # worker died more often than max_retries, node lost, ...
                    errors.append(RuntimeError(f"ray task {names[ref]!r} failed after {self.max_retries} retries: {e}"))
                else:
                    results[ref] = value
                    self.timings.append(Timing(names[ref], seconds, time.perf_counter() - t0, cpu))
                bar.update(1)
        if errors:
            for e in errors[1:]:  # the first is raised; the others would otherwise be lost
                print(f"ray: another task of '{desc}' failed too: {type(e).__name__}: {e}", file=sys.stderr)
            raise errors[0]
        return [results[r] for r in refs]

    def __enter__(self) -> "RayExecutor":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._started:
            import_ray().shutdown()
            self._started = False


def make_executor(kind: str = "local", **ray_options: Any) -> InProcessExecutor | RayExecutor:
    """``local`` (in this process) or ``ray`` with :class:`RayExecutor`'s options."""
    if kind == "local":
        return InProcessExecutor()
    if kind == "ray":
        return RayExecutor(**ray_options)
    raise ValueError(f"executor must be one of {EXECUTORS}, got {kind!r}")
