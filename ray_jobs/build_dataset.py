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
  head frame) fails at once, without retries (both are deterministic): it is recorded in ``ROOT/failures/{id}.json`` and the summary
  (error type, message, attempts) and the other subjects go on;
- any other exception is retried, up to ``--max-attempts`` attempts in all;
- an actor that dies (node lost, OOM kill, segfault) is replaced by a new one, and its subject is
  retried on an actor that is alive, up to the same limit. An actor that cannot be placed within
  ``--actor-start-timeout`` seconds (its node is gone for good) is given up; when no actor is
  left, the remaining subjects fail with that reason instead of waiting forever.
At the end :func:`facegs.factory.markers.finalize` removes leftovers of interrupted subjects and merges
``ROOT/manifest.parquet`` from complete subjects only; ``ROOT/summary.json`` holds the run's
results. Exit status: 0 when every subject is complete, 1 when any failed for good, 2 for bad
arguments or an unusable subject list.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from tqdm.auto import tqdm

from facegs.core.errors import FitError, InputError
from facegs.core.hashing import file_sha256
from facegs.core.storage import fetch_local, put_bytes_atomic
from facegs.factory.config import FactoryConfig, config_hash
from facegs.factory.markers import SUMMARY_NAME, complete_subjects, finalize, record_failure
from facegs.factory.process import CrashInjection, process_subject
from facegs.factory.sources import list_subject_urls, subject_id_of
from facegs.shards.root import DatasetRoot
from ray_jobs.ray_session import connect


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
            from facegs.parser.checkpoint import load_parser

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
# arguments
# ----------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m ray_jobs.build_dataset",
        description=__doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    io = p.add_argument_group("input and output")
    io.add_argument("--subjects", required=True,
                    help="directory of subject folders (each with a subject.json), or a text file with one subject "
                         "directory per line; local path or fsspec URL (s3://...)")
    io.add_argument("--out", required=True, help="dataset root: local path, file://, s3://bucket/prefix, memory://...")
    io.add_argument("--storage-options", default=None,
                    help="JSON dict of fsspec storage options for --out, --subjects and the parser "
                         "(e.g. '{\"endpoint_url\": \"http://127.0.0.1:9000\"}'); S3 credentials come from the "
                         "usual AWS environment variables")
    lab = p.add_argument_group("initial labels")
    lab.add_argument("--labels", default="existing",
                     help="'existing' (labels already in the subjects), 'parser:CKPT' (path or URL of a parser "
                          "checkpoint: facegs, BiSeNet state_dict or TorchScript) or 'noise:SPEC' (noise model on "
                          "ground-truth labels, synthetic subjects only; e.g. noise:pixel:0.5)")
    lab.add_argument("--no-flip-tta", action="store_true", help="parser labelling without left/right flip TTA")
    fit = p.add_argument_group("fit and render")
    fit.add_argument("--preset", default="cpu_demo", choices=["test", "cpu_demo", "gpu"], help="fit preset")
    fit.add_argument("--steps", type=int, default=None, help="fit steps (default: the preset's)")
    fit.add_argument("--fit-overrides", default=None, help="JSON dict of further FitConfig fields")
    fit.add_argument("--renders", type=int, default=32, help="novel views rendered per subject")
    fit.add_argument("--res", type=int, default=None, help="render size in px (default: the capture's width)")
    fit.add_argument("--yaw", type=float, nargs=2, default=(-90.0, 90.0), metavar=("MIN", "MAX"))
    fit.add_argument("--pitch", type=float, nargs=2, default=(-40.0, 40.0), metavar=("MIN", "MAX"))
    fit.add_argument("--roll-jitter", type=float, default=5.0, help="max |roll| in degrees")
    fit.add_argument("--seed", type=int, default=0, help="global seed (per-subject seeds derive from it)")
    fit.add_argument("--backend", default="auto", choices=["auto", "torch", "gsplat"], help="rasterizer")
    fit.add_argument("--min-views", type=int, default=4, help="subjects with fewer views fail")
    fit.add_argument("--no-camera-head-frame", action="store_true",
                     help="fail a subject whose fitted scene shows too few face parts for the head frame, instead of "
                          "falling back to the camera rig's frame (recorded as fit_metrics.head_frame_source)")
    sh = p.add_argument_group("shards")
    sh.add_argument("--rgb-format", default="jpg", choices=["jpg", "png"])
    sh.add_argument("--jpeg-quality", type=int, default=95)
    sh.add_argument("--no-alpha", action="store_true",
                    help="do not store the renders' coverage (alpha.png); trainers then cannot composite renders "
                         "over new backgrounds exactly (facegs finetune falls back to the background labels)")
    sh.add_argument("--maxcount", type=int, default=64, help="samples per shard")
    ray_g = p.add_argument_group("ray")
    ray_g.add_argument("--address", default=None,
                       help="Ray address (default: $RAY_ADDRESS, e.g. inside `ray job submit`, else a new local Ray)")
    ray_g.add_argument("--num-cpus", type=int, default=None, help="CPUs of a new local Ray (default: all)")
    ray_g.add_argument("--actors", type=int, default=None,
                       help="number of actors (default: one per GPU; without GPUs, CPUs // --cpus-per-actor)")
    ray_g.add_argument("--cpus-per-actor", type=int, default=1, help="CPU cores (and torch threads) per actor")
    ray_g.add_argument("--gpu", choices=["auto", "yes", "no"], default="auto",
                       help="GPU actors (num_gpus=1): auto = when the cluster has GPUs")
    ray_g.add_argument("--max-attempts", type=int, default=3, help="attempts per subject (actor deaths included)")
    ray_g.add_argument("--actor-start-timeout", type=float, default=900.0,
                       help="seconds an actor may take to be placed and started (autoscaling clusters need minutes)")
    ray_g.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--summary", default=None, help=f"also write the summary JSON here (always: ROOT/{SUMMARY_NAME})")
    p.add_argument("--crash-injection", default=None, help=argparse.SUPPRESS)  # tests: JSON of CrashInjection
    return p.parse_args(argv)


def build_config(a: argparse.Namespace) -> FactoryConfig:
    overrides = json.loads(a.fit_overrides) if a.fit_overrides else {}
    if a.steps is not None:
        overrides["steps"] = a.steps
    return FactoryConfig(labels=a.labels, flip_tta=not a.no_flip_tta, fit_preset=a.preset, fit_overrides=overrides,
                         n_renders=a.renders, yaw_range=tuple(a.yaw), pitch_range=tuple(a.pitch),
                         roll_jitter_deg=a.roll_jitter, res=a.res, rgb_format=a.rgb_format,
                         jpeg_quality=a.jpeg_quality, maxcount=a.maxcount, store_alpha=not a.no_alpha,
                         min_views=a.min_views, seed=a.seed, camera_head_frame_fallback=not a.no_camera_head_frame)


# ----------------------------------------------------------------------------------------------
# scheduling
# ----------------------------------------------------------------------------------------------


@dataclass
class Task:
    subject_id: str
    url: str
    attempts: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)


def plan_actors(a: argparse.Namespace) -> tuple[int, dict[str, Any]]:
    """(number of actors, their resource options) from the cluster's resources."""
    res = ray.cluster_resources()
    gpus, cpus = int(res.get("GPU", 0)), int(res.get("CPU", 1))
    use_gpu = a.gpu == "yes" or (a.gpu == "auto" and gpus > 0)
    if use_gpu:
        if gpus == 0 and not a.actors:
            print("[build_dataset] warning: --gpu yes but the cluster has no GPU now; starting 1 actor. On an "
                  "autoscaling cluster pass --actors N (one per GPU node to start)", file=sys.stderr)
        n = a.actors or max(1, gpus)
        return n, {"num_gpus": 1, "num_cpus": a.cpus_per_actor}
    if a.preset == "gpu":
        print("[build_dataset] warning: --preset gpu on CPU actors (no GPU in the cluster; pass --gpu yes on an "
              "autoscaling cluster whose GPU nodes are not up yet)", file=sys.stderr)
    n = a.actors or max(1, cpus // max(1, a.cpus_per_actor))
    return n, {"num_cpus": a.cpus_per_actor}


def run(a: argparse.Namespace) -> int:
    try:
        so = json.loads(a.storage_options) if a.storage_options else None
        cfg = build_config(a)
    except (ValueError, KeyError, TypeError, json.JSONDecodeError) as e:
        print(f"error: bad --storage-options, --fit-overrides or option value: {e}", file=sys.stderr)
        return 2
    t0 = time.time()
    try:
        urls = list_subject_urls(a.subjects, so)
        parser_sha = file_sha256(cfg.label_arg, so) if cfg.label_source == "parser" else None
    except (InputError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    chash = config_hash(cfg, parser_sha)
    ids = [subject_id_of(u, so) for u in urls]
    dup = {s for s in ids if ids.count(s) > 1}
    if dup:
        print(f"error: subject ids used by more than one directory: {sorted(dup)}", file=sys.stderr)
        return 2
    root = DatasetRoot.open(a.out, so)
    done = complete_subjects(root, config_hash=chash)
    todo = deque(Task(s, u) for s, u in zip(ids, urls) if s not in done)
    print(f"[build_dataset] {len(urls)} subjects, {len(urls) - len(todo)} already complete (config {chash}), "
          f"{len(todo)} to do -> {a.out}", flush=True)

    started = connect(a.address, a.num_cpus)
    results: dict[str, dict[str, Any]] = {}
    failures: dict[str, dict[str, Any]] = {}
    actor_deaths = 0
    try:
        n_actors, opts = plan_actors(a)
        n_actors = max(1, min(n_actors, len(todo))) if todo else 0
        threads = a.cpus_per_actor
        crash = json.loads(a.crash_injection) if a.crash_injection else None

        def new_actor():
            return SubjectWorker.options(**opts).remote(cfg.to_dict(), a.out, chash, so, threads, a.backend, crash)

        idle: list[Any] = []
        starting: dict[ray.ObjectRef, tuple[Any, float]] = {}  # info() ref -> (actor, created at)
        start_errors: list[str] = []

        def launch() -> None:
            actor = new_actor()
            starting[actor.info.remote()] = (actor, time.time())

        for _ in range(n_actors):
            launch()
        if n_actors:
            print(f"[build_dataset] {n_actors} actors ({opts})", flush=True)
        inflight: dict[ray.ObjectRef, tuple[Any, Task]] = {}
        bar = tqdm(total=len(todo), desc="subjects", unit="subj", disable=a.no_progress, dynamic_ncols=True)
        n_samples = 0

        def give_up(task: Task) -> None:
            last = task.errors[-1]
            failures[task.subject_id] = {"subject_id": task.subject_id, "url": task.url, "attempts": task.attempts,
                                         "error_type": last["error_type"], "message": last["message"],
                                         "errors": task.errors}
            record_failure(root, failures[task.subject_id])
            bar.update(1)
            tqdm.write(f"[build_dataset] FAILED {task.subject_id} after {task.attempts} attempt(s): "
                       f"{last['error_type']}: {last['message']}")

        def handle(task: Task, out: dict[str, Any]) -> None:
            nonlocal n_samples
            if out["ok"]:
                results[task.subject_id] = {**out, "attempts": task.attempts}
                n_samples += out["n_samples"]
                bar.update(1)
            else:
                task.errors.append({k: out.get(k) for k in ("error_type", "message", "traceback")}
                                   | {"attempt": task.attempts})
                if out["retryable"] and task.attempts < a.max_attempts:
                    tqdm.write(f"[build_dataset] retrying {task.subject_id} (attempt {task.attempts} failed: "
                               f"{out['error_type']})")
                    todo.append(task)
                else:
                    give_up(task)
            bar.set_postfix(done=len(results), failed=len(failures), samples=n_samples, refresh=False)

        while todo or inflight:
            while idle and todo:
                task = todo.popleft()
                task.attempts += 1
                actor = idle.pop()
                inflight[actor.process.remote(task.url, task.attempts)] = (actor, task)
            if not inflight and not starting:  # no actor left to run the remaining subjects
                why = "; ".join(dict.fromkeys(start_errors)) or "no actor could be started"
                while todo:
                    task = todo.popleft()
                    task.errors.append({"error_type": "NoActorAvailable", "message": why, "traceback": None,
                                        "attempt": task.attempts})
                    give_up(task)
                break
            ready, _ = ray.wait(list(inflight) + list(starting), num_returns=1, timeout=10.0)
            now = time.time()
            for ref, (actor, t_created) in list(starting.items()):
                if ref not in ready and now - t_created > a.actor_start_timeout:
                    starting.pop(ref)
                    ray.kill(actor, no_restart=True)
                    start_errors.append(f"an actor could not be placed within {a.actor_start_timeout:.0f} s "
                                        f"(resources {opts}; is a node with them alive?)")
            for ref in ready:
                if ref in starting:
                    actor, _ = starting.pop(ref)
                    try:
                        ray.get(ref)
                        idle.append(actor)
                    except ray.exceptions.RayError as e:  # __init__ failed (bad checkpoint, ...)
                        start_errors.append(f"an actor failed to start: {str(e).splitlines()[-1][:500]}")
                        tqdm.write(f"[build_dataset] {start_errors[-1]}")
                    continue
                actor, task = inflight.pop(ref)
                try:
                    out = ray.get(ref)
                except ray.exceptions.RayTaskError as e:  # raised outside process()'s own handler
                    idle.append(actor)
                    out = {"ok": False, "retryable": True, "error_type": type(e).__name__,
                           "message": str(e).splitlines()[0], "traceback": str(e)[-4000:]}
                except ray.exceptions.RayError as e:  # the actor's process died mid-subject
                    actor_deaths += 1
                    ray.kill(actor, no_restart=True)
                    launch()  # a replacement; the subject goes to whichever actor is free first
                    out = {"ok": False, "retryable": True, "error_type": type(e).__name__,
                           "message": f"worker died while processing the subject: {str(e).splitlines()[0]}"}
                else:
                    idle.append(actor)
                handle(task, out)
        bar.close()
        for actor in idle + [act for act, _ in starting.values()]:
            ray.kill(actor)
    finally:
        if started:
            ray.shutdown()

    fin = finalize(root)
    wall = time.time() - t0
    summary = {
        "root": a.out, "config_hash": chash, "config": cfg.to_dict(), "parser_sha256": parser_sha,
        "subjects_total": len(urls), "subjects_skipped": len(done), "subjects_done": len(results),
        "subjects_failed": len(failures), "actor_deaths": actor_deaths,
        "samples_written": sum(r["n_samples"] for r in results.values()),
        "wall_s": round(wall, 2), "subjects_per_hour": round(3600 * len(results) / wall, 2) if results else 0.0,
        "finalize": fin, "failures": failures, "results": results,
    }
    data = json.dumps(summary, indent=1, sort_keys=True).encode()
    put_bytes_atomic(root.fs, root.join(SUMMARY_NAME), data)
    if a.summary:
        Path(a.summary).write_bytes(data)
    print(f"[build_dataset] done: {len(results)} processed, {len(done)} skipped, {len(failures)} failed; "
          f"{fin['manifest_samples']} samples in {fin['manifest_shards']} shards of {fin['complete_subjects']} "
          f"subjects in {wall:.1f} s", flush=True)
    print(f"[build_dataset] manifest: {root.join('manifest.parquet')}\n[build_dataset] summary:  "
          f"{root.join(SUMMARY_NAME)}", flush=True)
    for f in failures.values():
        print(f"[build_dataset] failed: {f['subject_id']}: {f['error_type']}: {f['message']}", file=sys.stderr)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
