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
At the end :func:`facegs.factory.finalize.finalize` removes leftovers of interrupted subjects and
merges ``ROOT/manifest.parquet`` and the subject index ``ROOT/subjects.parquet`` from complete
subjects only; ``ROOT/summary.json`` holds the run's counts, timing and quality percentiles and the
first failures (bounded), ``ROOT/results.parquet`` one row per subject of the run.

Scale: the driver holds an id and a URL per subject to do, never a result row; start-up and
finalize read each object at most once and list each directory once, page by page
(``docs/benchmarks.md``, ``bench/scale.py``). ``--part K/N`` splits one job into N drivers. Exit status: 0 when every subject is complete, 1 when any failed for good, 2 for bad
arguments or an unusable subject list.

In-process use: ``build(BuildConfig(subjects=..., out=..., factory=FactoryConfig(...)))`` returns the
summary (the EM pipeline calls it). The command line is derived from :class:`BuildConfig` and
:class:`facegs.factory.config.FactoryConfig` (:mod:`facegs.core.options`): every option is
documented once, at its field.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import ray

from facegs.core.errors import InputError
from facegs.core.hashing import file_sha256
from facegs.core.ids import in_part, parse_part
from facegs.core.options import add_options, from_namespace, opt
from facegs.core.storage import put_bytes_atomic
from facegs.core.tables import parquet_stream
from facegs.factory.config import FactoryConfig, config_hash
from facegs.factory.finalize import finalize
from facegs.factory.markers import (
    FAILURES_DIR,
    RESULTS_NAME,
    SUBJECTS_DIR,
    SUMMARY_NAME,
    check_marker,
    iter_json_dir,
    list_names,
    marker_records,
    shard_sizes,
)
from facegs.factory.preflight import PreflightError, preflight
from facegs.factory.runstats import RESULTS_SCHEMA, RunStats
from facegs.factory.sources import iter_subjects
from facegs.shards.root import DatasetRoot
from facegs.splat.rasterize import BACKENDS
from ray_jobs.ray_session import connect
from ray_jobs.scheduling import Scheduler, Task

IO = "input and output"
RAY = "ray"


class BuildError(ValueError):
    """Bad arguments or an unusable subject list: nothing was processed (exit status 2)."""


@dataclass
class BuildConfig:
    """One factory run: the subjects, the dataset root, the dataset's config and how Ray runs it."""

    subjects: str = field(metadata=opt(
        "directory of subject folders (each with a subject.json), or a list file of subject directories: .txt (one "
        "per line, # comments), .csv (header row with a 'url' column) or .parquet ('url' column), read streaming; "
        "local path or fsspec URL (s3://...)", group=IO))
    out: str = field(metadata=opt("dataset root: local path, file://, s3://bucket/prefix, memory://...", group=IO))
    factory: FactoryConfig = field(default_factory=FactoryConfig, metadata=opt(
        "the dataset (labels, fit, novel views, shards): hashed into the config hash, so a change rebuilds"))
    part: str | None = field(default=None, metadata=opt(
        "K/N: process only part K (1..N) of the subjects, split by a stable hash of the subject id, so N drivers "
        "(any machines) can share one job and one ROOT; every part lists every subject (ids are checked for "
        "duplicates across the whole list). Run `facegs dataset finalize ROOT` once after all parts finished",
        metavar="K/N", group=IO))
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


# ----------------------------------------------------------------------------------------------
# planning
# ----------------------------------------------------------------------------------------------


@dataclass
class Plan:
    """What a run will do: the config hash, how many subjects (in this part), which are already
    complete (ids only), the rest to do. Nothing per subject beyond an id and a URL is held."""

    factory: FactoryConfig
    chash: str
    parser_sha256: str | None
    n_subjects: int
    done: set[str]
    todo: deque[Task]
    part: tuple[int, int] | None = None
    n_listed: int = 0


def check_unique(pairs: Iterable[tuple[str, str]]) -> Iterator[tuple[str, str]]:
    """Pass ``(url, id)`` pairs through; at the end raise :class:`BuildError` naming the ids used by
    more than one URL (a set: O(N), one pass)."""
    seen: set[str] = set()
    dup: set[str] = set()
    for url, sid in pairs:
        if sid in seen:
            dup.add(sid)
            continue
        seen.add(sid)
        yield url, sid
    if dup:
        shown = sorted(dup)
        raise BuildError(f"subject ids used by more than one directory: {shown[:20]}"
                         + (f" and {len(shown) - 20} more" if len(shown) > 20 else ""))


def plan(cfg: BuildConfig) -> Plan:
    """List the subjects, hash the config and find the subjects already complete under ``cfg.out``.
    Raises :class:`BuildError` for an unusable subject list, duplicate subject ids or a bad config.

    Start-up cost: the subject list read streaming, each ``subject.json`` read once (concurrent
    batches), one streamed listing each of ``shards/``, ``subjects/`` and ``failures/`` of the
    root, and the done markers of this run's subjects read once each."""
    so = cfg.storage_options
    try:
        factory = cfg.factory_config()
        part = parse_part(cfg.part) if cfg.part else None
        parser_sha = file_sha256(factory.label_arg, so) if factory.label_source == "parser" else None
        chash = config_hash(factory, parser_sha)
        sids: list[str] = []  # two lists, not a list of pairs: 64 bytes less per subject
        urls: list[str] = []
        n_listed = 0
        for url, sid in check_unique(iter_subjects(cfg.subjects, so)):
            n_listed += 1
            if in_part(sid, part):
                sids.append(sid)
                urls.append(url)
    except (InputError, OSError, ValueError, KeyError, TypeError) as e:
        raise BuildError(str(e)) from None
    root = DatasetRoot.open(cfg.out, so)
    wanted = set(sids)
    sizes = shard_sizes(root)[0]
    done: set[str] = set()
    stale: set[str] = set()
    for sid, marker in iter_json_dir(root, SUBJECTS_DIR, part, only=wanted):
        if (marker is not None and marker.get("config_hash") == chash
                and check_marker(sid, marker, marker_records(root, marker), sizes) is None):
            done.add(sid)
        else:
            stale.add(sid)
    del sizes, wanted
    failed = list_names(root, FAILURES_DIR, part)
    todo = deque(Task(sid, url, clear_marker=sid in stale, clear_failure=sid in failed)
                 for sid, url in zip(sids, urls) if sid not in done)
    return Plan(factory, chash, parser_sha, len(sids), done, todo, part, n_listed)


# ----------------------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------------------


def build(cfg: BuildConfig) -> dict[str, Any]:
    """Run the factory (see the module docstring); returns the summary written to ``ROOT/summary.json``
    (``subjects_failed`` > 0: some subjects failed for good). Raises :class:`BuildError` before any
    work for bad arguments. Uses the caller's Ray when one is initialised.

    The summary is bounded (:class:`facegs.factory.runstats.RunStats`: counts, percentiles, the
    first failures); per-subject rows go to ``ROOT/results.parquet``, written streaming."""
    t0 = time.time()
    try:  # before anything is fitted or written (facegs.factory.preflight): one line, exit 2
        preflight(cfg.subjects, cfg.out, cfg.factory, cfg.storage_options)
    except PreflightError as e:
        raise BuildError(str(e)) from None
    p = plan(cfg)
    root = DatasetRoot.open(cfg.out, cfg.storage_options)
    where = f" (part {p.part[0]}/{p.part[1]} of {p.n_listed} listed)" if p.part else ""
    print(f"[build_dataset] {p.n_subjects} subjects{where}, {len(p.done)} already complete (config {p.chash}), "
          f"{len(p.todo)} to do -> {cfg.out}", flush=True)
    stats = RunStats()
    started = connect(cfg.address, cfg.num_cpus)
    try:
        with parquet_stream(root.fs, root.join(RESULTS_NAME), RESULTS_SCHEMA, rows_per_group=1024) as rows:
            sched = Scheduler(cfg, p, root, stats, rows.add)
            sched.run()
    finally:
        if started:
            ray.shutdown()
    fin = finalize(root, part=p.part)
    wall = time.time() - t0
    st = stats.as_dict()
    summary = {
        "root": cfg.out, "config_hash": p.chash, "config": p.factory.to_dict(), "parser_sha256": p.parser_sha256,
        "part": list(p.part) if p.part else None, "subjects_listed": p.n_listed,
        "subjects_total": p.n_subjects, "subjects_skipped": len(p.done), **st, "actor_deaths": sched.actor_deaths,
        "wall_s": round(wall, 2), "subjects_per_hour": round(3600 * stats.done / wall, 2) if stats.done else 0.0,
        "finalize": fin, "results_table": RESULTS_NAME,
    }
    data = json.dumps(summary, indent=1, sort_keys=True).encode()
    put_bytes_atomic(root.fs, root.join(SUMMARY_NAME), data)
    if cfg.summary:
        Path(cfg.summary).write_bytes(data)
    print(f"[build_dataset] done: {stats.done} processed, {len(p.done)} skipped, {stats.failed} failed; "
          f"{fin['manifest_samples']} samples in {fin['manifest_shards']} shards of {fin['complete_subjects']} "
          f"subjects in {wall:.1f} s", flush=True)
    print(f"[build_dataset] manifest: {root.join('manifest.parquet')}\n[build_dataset] summary:  "
          f"{root.join(SUMMARY_NAME)}\n[build_dataset] results:  {root.join(RESULTS_NAME)}", flush=True)
    for f in stats.failures.values():
        print(f"[build_dataset] failed: {f['subject_id']}: {f['error_type']}: {f['message']}", file=sys.stderr)
    if stats.failures_not_listed:
        print(f"[build_dataset] ... and {stats.failures_not_listed} more failures (ROOT/failures/, "
              f"ROOT/{RESULTS_NAME})", file=sys.stderr)
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
