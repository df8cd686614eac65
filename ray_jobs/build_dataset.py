"""The dataset factory on Ray: subjects -> initial labels -> joint 3DGS fit -> renders -> WebDataset shards.

    python -m ray_jobs.build_dataset --subjects SUBJECTS --out ROOT_URL [--labels parser:CKPT] ...

One long-lived actor per GPU (``@ray.remote(num_gpus=1)``; CPU actors when the cluster has no
GPUs) processes one subject at a time with :func:`facegs.factory.process.process_subject`. The driver
keeps exactly one subject in flight per actor and waits with ``ray.wait`` (back-pressure: a list
of 100k subjects is never submitted at once). Subjects already complete under ROOT_URL with the
same config hash are skipped, so a rerun after any crash continues where the last run stopped;
because every subject's shards have deterministic names and bytes, the rerun's output equals an
uninterrupted run's.

Failures:
- a bad subject (facegs.core.errors.InputError: corrupt image, missing camera, non-finite pose, too
  few views, ...) or an unusable fit (facegs.core.errors.FitError: too few face parts to place the
  head frame) fails at once, without retries (both are deterministic): it is recorded in
  ``ROOT/failures/{id}.json`` and the summary (error type, message, attempts) and the other
  subjects go on;
- any other exception is retried, up to ``--max-attempts`` attempts in all;
- an actor that dies (node lost, OOM kill, segfault) is replaced by a new one, and its subject is
  retried on an actor that is alive, up to the same limit. An actor that cannot be placed within
  ``--actor-start-timeout`` seconds (its node is gone for good) is given up; when no actor is
  left, the remaining subjects fail with that reason instead of waiting forever.
At the end :func:`facegs.factory.markers.finalize` removes leftovers of interrupted subjects and merges
``ROOT/manifest.parquet`` from complete subjects only; ``ROOT/summary.json`` holds the run's
results. Exit status: 0 when every subject is complete, 1 when any failed for good, 2 for bad
arguments or an unusable subject list.

In-process use: ``build(BuildConfig(subjects=..., out=..., factory=FactoryConfig(...)))`` returns the
summary (the EM pipeline calls it). The command line is derived from :class:`BuildConfig` and
:class:`facegs.factory.config.FactoryConfig` (:mod:`facegs.core.options`): every option is
documented once, at its field.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import ray
from tqdm.auto import tqdm

from facegs.core.errors import FitError, InputError
from facegs.core.hashing import file_sha256
from facegs.core.options import add_options, from_namespace, opt
from facegs.core.storage import fetch_local, put_bytes_atomic
from facegs.factory.config import FactoryConfig, config_hash
from facegs.factory.markers import SUMMARY_NAME, complete_subjects, finalize, record_failure
from facegs.factory.process import CrashInjection, process_subject
from facegs.factory.sources import list_subject_urls, subject_id_of
from facegs.parser.checkpoint import load_parser
from facegs.shards.root import DatasetRoot
from facegs.splat.rasterize import BACKENDS
from ray_jobs.ray_session import connect

IO, RAY = "input and output", "ray"


class BuildError(ValueError):
    """Bad arguments or an unusable subject list: nothing was processed (exit status 2)."""


@dataclass
class BuildConfig:
    """One factory run: the subjects, the dataset root, the dataset's config and how Ray runs it."""

    subjects: str = field(metadata=opt(
        "directory of subject folders (each with a subject.json), or a text file with one subject directory per "
        "line; local path or fsspec URL (s3://...)", group=IO))
    out: str = field(metadata=opt("dataset root: local path, file://, s3://bucket/prefix, memory://...", group=IO))
    factory: FactoryConfig = field(default_factory=FactoryConfig, metadata=opt(
        "the dataset (labels, fit, novel views, shards): hashed into the config hash, so a change rebuilds"))
    steps: int | None = field(default=None, metadata=opt(
        "fit steps (default: the preset's); a shortcut for --fit-overrides '{\"steps\": N}'"))
    storage_options: dict[str, Any] | None = field(default=None, metadata=opt(
        "JSON dict of fsspec storage options for --out, --subjects and the parser (e.g. '{\"endpoint_url\": "
        "\"http://127.0.0.1:9000\"}'); S3 credentials come from the usual AWS environment variables", group=IO))
    summary: str | None = field(default=None, metadata=opt(
        f"also write the summary JSON here (always: ROOT/{SUMMARY_NAME})", group=IO))
    backend: str = field(default="auto", metadata=opt("rasterizer", choices=BACKENDS))
    address: str | None = field(default=None, metadata=opt(
        "Ray address (default: $RAY_ADDRESS, e.g. inside `ray job submit`, else a new local Ray)", group=RAY))
    num_cpus: int | None = field(default=None, metadata=opt("CPUs of a new local Ray (default: all)", group=RAY))
    actors: int | None = field(default=None, metadata=opt(
        "number of actors (default: one per GPU; without GPUs, CPUs // --cpus-per-actor)", group=RAY))
    cpus_per_actor: int = field(default=1, metadata=opt("CPU cores (and torch threads) per actor", group=RAY))
    gpu: str = field(default="auto", metadata=opt(
        "GPU actors (num_gpus=1): auto = when the cluster has GPUs", choices=("auto", "yes", "no"), group=RAY))
    max_attempts: int = field(default=3, metadata=opt("attempts per subject (actor deaths included)", group=RAY))
    actor_start_timeout: float = field(default=900.0, metadata=opt(
        "seconds an actor may take to be placed and started (autoscaling clusters need minutes)", group=RAY))
    progress: bool = field(default=True, metadata=opt("no progress bar", flag="--no-progress", group=RAY))
    crash_injection: dict[str, Any] | None = field(default=None, metadata=opt(argparse.SUPPRESS))  # tests

    def factory_config(self) -> FactoryConfig:
        """The dataset config with ``steps`` folded into its fit overrides."""
        if self.steps is None:
            return self.factory
        return FactoryConfig(**{**asdict(self.factory),
                                "fit_overrides": {**self.factory.fit_overrides, "steps": self.steps}})


@ray.remote(max_restarts=0, max_task_retries=0)
class SubjectWorker:
    """Owns one GPU (or ``cpus`` CPU cores) and processes one subject per :meth:`process` call."""

    def __init__(self, cfg: dict[str, Any], root_url: str, chash: str, storage_options: dict[str, Any] | None,
                 threads: int, backend: str, crash: dict[str, Any] | None) -> None:
        import torch

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

    def process(self, url: str, attempt: int) -> dict[str, Any]:
        """Returns ``{"ok": True, ...SubjectResult}`` or ``{"ok": False, "retryable", "error_type",
        "message", "traceback"}``; only the death of this process escapes as a Ray error."""
        try:
            r = process_subject(url, self.root_url, self.cfg, chash=self.chash, parser=self.parser,
                                device=self.device, backend=self.backend, storage_options=self.so,
                                attempt=attempt, crash=self.crash)
            return {"ok": True, **r.as_dict(), "pid": os.getpid()}
        except (InputError, FitError) as e:
            return {"ok": False, "retryable": False, "error_type": type(e).__name__, "message": str(e),
                    "traceback": None}
        except Exception as e:  # noqa: BLE001 - reported per subject, retried by the driver
            return {"ok": False, "retryable": True, "error_type": type(e).__name__, "message": str(e),
                    "traceback": traceback.format_exc()[-4000:]}


# ----------------------------------------------------------------------------------------------
# planning
# ----------------------------------------------------------------------------------------------


@dataclass
class Task:
    subject_id: str
    url: str
    attempts: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Plan:
    """What a run will do: the config hash, every subject, those already complete, the rest to do."""

    factory: FactoryConfig
    chash: str
    parser_sha256: str | None
    urls: list[str]
    done: dict[str, dict[str, Any]]
    todo: deque[Task]


def plan(cfg: BuildConfig) -> Plan:
    """List the subjects, hash the config and find the subjects already complete under ``cfg.out``.
    Raises :class:`BuildError` for an unusable subject list, duplicate subject ids or a bad config."""
    so = cfg.storage_options
    try:
        factory = cfg.factory_config()
        urls = list_subject_urls(cfg.subjects, so)
        parser_sha = file_sha256(factory.label_arg, so) if factory.label_source == "parser" else None
    except (InputError, OSError, ValueError, KeyError, TypeError) as e:
        raise BuildError(str(e)) from None
    chash = config_hash(factory, parser_sha)
    ids = [subject_id_of(u, so) for u in urls]
    seen: dict[str, int] = {}
    for s in ids:
        seen[s] = seen.get(s, 0) + 1
    dup = sorted(s for s, n in seen.items() if n > 1)
    if dup:
        raise BuildError(f"subject ids used by more than one directory: {dup}")
    done = complete_subjects(DatasetRoot.open(cfg.out, so), config_hash=chash)
    todo = deque(Task(s, u) for s, u in zip(ids, urls) if s not in done)
    return Plan(factory, chash, parser_sha, urls, done, todo)


def plan_actors(cfg: BuildConfig) -> tuple[int, dict[str, Any]]:
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


# ----------------------------------------------------------------------------------------------
# scheduling: one subject in flight per actor, ray.wait back-pressure
# ----------------------------------------------------------------------------------------------


class Scheduler:
    """Runs a plan's tasks on actors: starts them, hands out subjects, retries, replaces dead actors."""

    def __init__(self, cfg: BuildConfig, p: Plan, root: DatasetRoot) -> None:
        self.cfg, self.plan, self.root, self.todo = cfg, p, root, p.todo
        self.results: dict[str, dict[str, Any]] = {}
        self.failures: dict[str, dict[str, Any]] = {}
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
        self.failures[task.subject_id] = {"subject_id": task.subject_id, "url": task.url, "attempts": task.attempts,
                                          "error_type": last["error_type"], "message": last["message"],
                                          "errors": task.errors}
        record_failure(self.root, self.failures[task.subject_id])
        self.bar.update(1)
        tqdm.write(f"[build_dataset] FAILED {task.subject_id} after {task.attempts} attempt(s): "
                   f"{last['error_type']}: {last['message']}")

    def handle(self, task: Task, out: dict[str, Any]) -> None:
        if out["ok"]:
            self.results[task.subject_id] = {**out, "attempts": task.attempts}
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
        self.bar.set_postfix(done=len(self.results), failed=len(self.failures), samples=self.n_samples,
                             refresh=False)

    def _dispatch(self) -> None:
        while self.idle and self.todo:
            task = self.todo.popleft()
            task.attempts += 1
            actor = self.idle.pop()
            self.inflight[actor.process.remote(task.url, task.attempts)] = (actor, task)

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


# ----------------------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------------------


def build(cfg: BuildConfig) -> dict[str, Any]:
    """Run the factory (see the module docstring); returns the summary written to ``ROOT/summary.json``
    (``subjects_failed`` > 0: some subjects failed for good). Raises :class:`BuildError` before any
    work for bad arguments. Uses the caller's Ray when one is initialised."""
    t0 = time.time()
    p = plan(cfg)
    root = DatasetRoot.open(cfg.out, cfg.storage_options)
    print(f"[build_dataset] {len(p.urls)} subjects, {len(p.done)} already complete (config {p.chash}), "
          f"{len(p.todo)} to do -> {cfg.out}", flush=True)
    started = connect(cfg.address, cfg.num_cpus)
    try:
        sched = Scheduler(cfg, p, root)
        sched.run()
    finally:
        if started:
            ray.shutdown()
    fin = finalize(root)
    wall = time.time() - t0
    results = sched.results
    summary = {
        "root": cfg.out, "config_hash": p.chash, "config": p.factory.to_dict(), "parser_sha256": p.parser_sha256,
        "subjects_total": len(p.urls), "subjects_skipped": len(p.done), "subjects_done": len(results),
        "subjects_failed": len(sched.failures), "actor_deaths": sched.actor_deaths,
        "samples_written": sum(r["n_samples"] for r in results.values()),
        "wall_s": round(wall, 2), "subjects_per_hour": round(3600 * len(results) / wall, 2) if results else 0.0,
        "finalize": fin, "failures": sched.failures, "results": results,
    }
    data = json.dumps(summary, indent=1, sort_keys=True).encode()
    put_bytes_atomic(root.fs, root.join(SUMMARY_NAME), data)
    if cfg.summary:
        Path(cfg.summary).write_bytes(data)
    print(f"[build_dataset] done: {len(results)} processed, {len(p.done)} skipped, {len(sched.failures)} failed; "
          f"{fin['manifest_samples']} samples in {fin['manifest_shards']} shards of {fin['complete_subjects']} "
          f"subjects in {wall:.1f} s", flush=True)
    print(f"[build_dataset] manifest: {root.join('manifest.parquet')}\n[build_dataset] summary:  "
          f"{root.join(SUMMARY_NAME)}", flush=True)
    for f in sched.failures.values():
        print(f"[build_dataset] failed: {f['subject_id']}: {f['error_type']}: {f['message']}", file=sys.stderr)
    return summary


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ray_jobs.build_dataset",
                                description=(__doc__ or "").split("\n\n")[0] + "\n\n" + (__doc__ or "").split("\n\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(p, BuildConfig)
    return p


def parse_args(argv: list[str] | None = None) -> BuildConfig:
    """The :class:`BuildConfig` of a command line (argparse exits 2 on malformed options)."""
    p = make_parser()
    a = p.parse_args(argv)
    try:
        return from_namespace(BuildConfig, a)
    except (ValueError, KeyError, TypeError) as e:  # FactoryConfig's own checks (labels, preset, ...)
        p.error(str(e.args[0] if isinstance(e, KeyError) and e.args else e))
        raise  # unreachable: p.error exits


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    try:
        summary = build(cfg)
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 1 if summary["subjects_failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
