"""Scheduling a factory run on Ray: one long-lived actor per GPU, one subject in flight per actor.

In: the run's :class:`ray_jobs.build_dataset.BuildConfig` and its plan (the subjects to do). Out: per
subject a result (samples, shards, fit metrics) or a failure (error type, message, attempts),
collected by :class:`Scheduler`; failures are also recorded under ``ROOT/failures/``.

Back-pressure: the driver never holds more than one pending task per actor (``ray.wait``), so a list
of 100k subjects is never submitted at once. Retries and dead-actor replacement follow
``ray_jobs/build_dataset.py``'s module docstring.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
import torch
from tqdm.auto import tqdm

from facegs.core.errors import FitError, InputError
from facegs.core.storage import fetch_local
from facegs.factory.config import FactoryConfig
from facegs.factory.markers import record_failure
from facegs.factory.process import CrashInjection, process_subject
from facegs.factory.runstats import RunStats
from facegs.parser.checkpoint import load_parser
from facegs.shards.root import DatasetRoot


@ray.remote(max_restarts=0, max_task_retries=0)
class SubjectWorker:
    """Owns one GPU (or ``cpus`` CPU cores) and processes one subject per :meth:`process` call."""

    def __init__(self, cfg: dict[str, Any], root_url: str, chash: str, storage_options: dict[str, Any] | None,
                 threads: int, backend: str, crash: dict[str, Any] | None) -> None:

        torch.set_num_threads(max(1, threads))
        self.cfg = FactoryConfig.from_dict(cfg)
        self.root_url, self.chash, self.so, self.backend = root_url, chash, storage_options, backend
        self.crash = CrashInjection(**crash) if crash else None
        self.device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
        self.parser = None
        if self.cfg.label_source == "parser":
            self._tmp = tempfile.TemporaryDirectory(prefix="facegs-parser-")
            self.parser = load_parser(fetch_local(self.cfg.label_arg, Path(self._tmp.name), storage_options),
                                      device=self.device)

    def info(self) -> dict[str, Any]:
        ctx = ray.get_runtime_context()
        return {"node_id": ctx.get_node_id(), "pid": os.getpid(), "device": self.device}

    def process(self, url: str, attempt: int, clear_marker: bool = True, clear_failure: bool = True) -> dict[str, Any]:
        """Returns ``{"ok": True, ...SubjectResult}`` or ``{"ok": False, "retryable", "error_type",
        "message", "traceback"}``; only the death of this process escapes as a Ray error."""
        try:
            r = process_subject(url, self.root_url, self.cfg, chash=self.chash, parser=self.parser,
                                device=self.device, backend=self.backend, storage_options=self.so,
                                attempt=attempt, crash=self.crash, clear_marker=clear_marker,
                                clear_failure=clear_failure)
            return {"ok": True, **r.as_dict(), "pid": os.getpid()}
        except (InputError, FitError) as e:
            return {"ok": False, "retryable": False, "error_type": type(e).__name__, "message": str(e),
                    "traceback": None}
        except Exception as e:  # noqa: BLE001 - reported per subject, retried by the driver
            return {"ok": False, "retryable": True, "error_type": type(e).__name__, "message": str(e),
                    "traceback": traceback.format_exc()[-4000:]}


@dataclass(slots=True)
class Task:
    """One subject to do (slots: a million of them stay small). ``clear_marker`` / ``clear_failure``:
    the start-up listing saw a done marker / failure record of it (deleted before it is redone)."""

    subject_id: str
    url: str
    attempts: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    clear_marker: bool = True
    clear_failure: bool = True


def plan_actors(cfg: Any) -> tuple[int, dict[str, Any]]:
    """(number of actors, their resource options) from the cluster's resources."""
    res = ray.cluster_resources()
    gpus, cpus = int(res.get("GPU", 0)), int(res.get("CPU", 1))
    use_gpu = cfg.gpu == "yes" or (cfg.gpu == "auto" and gpus > 0)
    if use_gpu:
        if gpus == 0 and not cfg.actors:
            print("[build_dataset] warning: --gpu yes but the cluster has no GPU now; starting 1 actor. On an "
                  "autoscaling cluster pass --actors N (one per GPU node to start)", file=sys.stderr)
        return cfg.actors or max(1, gpus), {"num_gpus": 1, "num_cpus": cfg.cpus_per_actor}
    if cfg.factory.fit_preset == "gpu":
        print("[build_dataset] warning: --preset gpu on CPU actors (no GPU in the cluster; pass --gpu yes on an "
              "autoscaling cluster whose GPU nodes are not up yet)", file=sys.stderr)
    return cfg.actors or max(1, cpus // max(1, cfg.cpus_per_actor)), {"num_cpus": cfg.cpus_per_actor}


class Scheduler:
    """Runs a plan's tasks on actors: starts them, hands out subjects, retries, replaces dead actors."""

    def __init__(self, cfg: Any, p: Any, root: DatasetRoot, stats: RunStats | None = None,
                 sink: Callable[[dict[str, Any]], None] | None = None) -> None:
        """``cfg``: a :class:`ray_jobs.build_dataset.BuildConfig`; ``p``: its :class:`ray_jobs.build_dataset.Plan`;
        ``stats``: the bounded aggregate of results; ``sink``: receives each subject's result row
        (``results.parquet``). No result is kept per subject."""
        self.cfg, self.plan, self.root, self.todo = cfg, p, root, p.todo
        self.stats = stats if stats is not None else RunStats()
        self.sink = sink or (lambda row: None)
        self.actor_deaths = 0
        self.n_samples = 0
        self.idle: list[Any] = []
        self.starting: dict[ray.ObjectRef, tuple[Any, float]] = {}  # info() ref -> (actor, created at)
        self.inflight: dict[ray.ObjectRef, tuple[Any, Task]] = {}
        self.start_errors: list[str] = []
        n_actors, self.opts = plan_actors(cfg)
        self.n_actors = max(1, min(n_actors, len(self.todo))) if self.todo else 0
        self.bar = tqdm(total=len(self.todo), desc="subjects", unit="subj", disable=not cfg.progress,
                        dynamic_ncols=True)

    def launch(self) -> None:
        c = self.cfg
        actor = SubjectWorker.options(**self.opts).remote(self.plan.factory.to_dict(), c.out, self.plan.chash,
                                                          c.storage_options, c.cpus_per_actor, c.backend,
                                                          c.crash_injection)
        self.starting[actor.info.remote()] = (actor, time.time())

    def give_up(self, task: Task) -> None:
        last = task.errors[-1]
        failure = {"subject_id": task.subject_id, "url": task.url, "attempts": task.attempts,
                   "error_type": last["error_type"], "message": last["message"], "errors": task.errors}
        record_failure(self.root, failure)
        self.sink(self.stats.add_failure(failure))
        self.bar.update(1)
        tqdm.write(f"[build_dataset] FAILED {task.subject_id} after {task.attempts} attempt(s): "
                   f"{last['error_type']}: {last['message']}")

    def handle(self, task: Task, out: dict[str, Any]) -> None:
        if out["ok"]:
            self.sink(self.stats.add_done(task.subject_id, task.url, task.attempts, out))
            self.n_samples += out["n_samples"]
            self.bar.update(1)
        else:
            task.errors.append({k: out.get(k) for k in ("error_type", "message", "traceback")}
                               | {"attempt": task.attempts})
            if out["retryable"] and task.attempts < self.cfg.max_attempts:
                tqdm.write(f"[build_dataset] retrying {task.subject_id} (attempt {task.attempts} failed: "
                           f"{out['error_type']})")
                self.todo.append(task)
            else:
                self.give_up(task)
        self.bar.set_postfix(done=self.stats.done, failed=self.stats.failed, samples=self.n_samples,
                             refresh=False)

    def _dispatch(self) -> None:
        while self.idle and self.todo:
            task = self.todo.popleft()
            task.attempts += 1
            actor = self.idle.pop()
            first = task.attempts == 1  # a retry may follow a death after the marker was written
            ref = actor.process.remote(task.url, task.attempts, task.clear_marker or not first,
                                       task.clear_failure or not first)
            self.inflight[ref] = (actor, task)

    def _fail_remaining(self) -> None:
        why = "; ".join(dict.fromkeys(self.start_errors)) or "no actor could be started"
        while self.todo:
            task = self.todo.popleft()
            task.errors.append({"error_type": "NoActorAvailable", "message": why, "traceback": None,
                                "attempt": task.attempts})
            self.give_up(task)

    def _expire_starting(self, ready: list[ray.ObjectRef]) -> None:
        now = time.time()
        for ref, (actor, t_created) in list(self.starting.items()):
            if ref not in ready and now - t_created > self.cfg.actor_start_timeout:
                self.starting.pop(ref)
                ray.kill(actor, no_restart=True)
                self.start_errors.append(f"an actor could not be placed within {self.cfg.actor_start_timeout:.0f} s "
                                         f"(resources {self.opts}; is a node with them alive?)")

    def _started(self, ref: ray.ObjectRef) -> None:
        actor, _ = self.starting.pop(ref)
        try:
            ray.get(ref)
            self.idle.append(actor)
        except ray.exceptions.RayError as e:  # __init__ failed (bad checkpoint, ...)
            self.start_errors.append(f"an actor failed to start: {str(e).splitlines()[-1][:500]}")
            tqdm.write(f"[build_dataset] {self.start_errors[-1]}")

    def _finished(self, ref: ray.ObjectRef) -> None:
        actor, task = self.inflight.pop(ref)
        try:
            out = ray.get(ref)
        except ray.exceptions.RayTaskError as e:  # raised outside process()'s own handler
            self.idle.append(actor)
            out = {"ok": False, "retryable": True, "error_type": type(e).__name__,
                   "message": str(e).splitlines()[0], "traceback": str(e)[-4000:]}
        except ray.exceptions.RayError as e:  # the actor's process died mid-subject
            self.actor_deaths += 1
            ray.kill(actor, no_restart=True)
            self.launch()  # a replacement; the subject goes to whichever actor is free first
            out = {"ok": False, "retryable": True, "error_type": type(e).__name__,
                   "message": f"worker died while processing the subject: {str(e).splitlines()[0]}"}
        else:
            self.idle.append(actor)
        self.handle(task, out)

    def run(self) -> None:
        for _ in range(self.n_actors):
            self.launch()
        if self.n_actors:
            print(f"[build_dataset] {self.n_actors} actors ({self.opts})", flush=True)
        while self.todo or self.inflight:
            self._dispatch()
            if not self.inflight and not self.starting:  # no actor left to run the remaining subjects
                self._fail_remaining()
                break
            ready, _ = ray.wait(list(self.inflight) + list(self.starting), num_returns=1, timeout=10.0)
            self._expire_starting(ready)
            for ref in ready:
                if ref in self.starting:
                    self._started(ref)
                else:
                    self._finished(ref)
        self.bar.close()
        for actor in self.idle + [act for act, _ in self.starting.values()]:
            ray.kill(actor)
