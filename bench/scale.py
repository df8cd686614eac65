"""Per-subject bookkeeping cost against the number of subjects N, on local disk and on S3 (moto).

    python bench/scale.py                          # local N = 1k, 10k, 100k; S3 N = 1k, 10k
    python bench/scale.py --quick                  # local 200, 2k; S3 200 (CI / dev)
    python bench/scale.py --sizes 1000,10000 --s3-sizes 1000

Fake subjects are written through the real functions -- :func:`facegs.shards.writer.commit_subject`
(encode, tar, atomic publish, records) and :func:`facegs.factory.markers.write_marker` (the done
marker with its manifest rows), as :func:`facegs.factory.process.process_subject` does after the fit
-- with one tiny sample (16x16) per subject, so that only the bookkeeping is timed. Each subject's
source is a folder with a ``subject.json`` (its id), so the driver's real start-up
(:func:`ray_jobs.build_dataset.plan`: subject listing, ids, complete subjects) runs on it.

Phases, per N and storage: start-up of a fresh run (empty root), the commits of all N subjects
(``--workers`` threads, wall time per subject), one more commit at N (median of ``--probe``
subjects, one at a time), finalize, start-up of
a rerun (all N complete), the duplicate-id check over N ids, and (local) the time until
``facegs.shards.stream.ShardDataset`` yields its first sample over the N-shard manifest.
Driver memory: tracemalloc's peak and retained size of the start-up's plan (a separate, untimed call).
S3 requests are counted by kind on the moto server (a WSGI middleware, ``tests/s3_server.py``).

Writes ``bench/out/scale.json`` and ``bench/out/scale.png`` (cost per subject against N).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import tracemalloc
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))

import fsspec  # noqa: E402
from shard_io import synthetic_samples  # noqa: E402

from facegs.core.storage import is_local_fs  # noqa: E402
from facegs.factory.config import FactoryConfig, config_hash  # noqa: E402
from facegs.factory.finalize import finalize  # noqa: E402
from facegs.factory.markers import write_marker  # noqa: E402
from facegs.shards.root import DatasetRoot  # noqa: E402
from facegs.shards.stream import ShardDataset  # noqa: E402
from facegs.shards.writer import commit_subject  # noqa: E402
from ray_jobs.build_dataset import BuildConfig, check_unique, plan  # noqa: E402

KINDS = ("LIST", "HEAD", "GET", "PUT", "DELETE")


def sid_of(i: int) -> str:
    return f"subj{i:07d}"


def commit_fake(root: DatasetRoot, sid: str, src: str, chash: str) -> None:
    """What a worker writes for one subject after its fit: shards + records, then the done marker."""
    recs = commit_subject(synthetic_samples(sid, 1, 16, seed=len(sid)), root, sid, rgb_format="png")
    write_marker(root, {"subject_id": sid, "url": f"{src}/{sid}", "config_hash": chash,
                        "quality": {"quality": round((zlib.crc32(sid.encode()) % 1000) / 1000, 3)}, "fit_metrics": {},
                        "facegs_version": "0.1.0"}, recs)


def make_sources(fs: fsspec.AbstractFileSystem, src_path: str, n: int) -> None:
    """``src/{id}/subject.json`` for ``n`` subjects (the ids the driver reads at start-up)."""
    batch: dict[str, bytes] = {}
    if is_local_fs(fs):
        for i in range(n):
            d = Path(src_path) / sid_of(i)
            d.mkdir(parents=True, exist_ok=True)
            (d / "subject.json").write_text(json.dumps({"subject_id": sid_of(i)}))
        return
    for i in range(n):
        sid = sid_of(i)
        batch[f"{src_path}/{sid}/subject.json"] = json.dumps({"subject_id": sid}).encode()
        if len(batch) >= 2000:
            fs.pipe(batch)
            batch = {}
    if batch:
        fs.pipe(batch)


class Counter:
    """Per-phase S3 request counts (None locally)."""

    def __init__(self, server: Any) -> None:
        self.server = server

    def reset(self) -> None:
        if self.server is not None:
            self.server.reset()

    def take(self) -> dict[str, int] | None:
        if self.server is None:
            return None
        c = self.server.counts()
        self.server.reset()
        return {k: c.get(k, 0) for k in (*KINDS, "OTHER")}


def timed(fn: Any, *a: Any, **kw: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - t0


def plan_memory(cfg: BuildConfig) -> dict[str, float]:
    """tracemalloc peak and retained MB of one start-up (the plan kept alive)."""
    gc.collect()
    tracemalloc.start()
    p = plan(cfg)
    cur, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del p
    return {"retained_mb": round(cur / 1e6, 2), "peak_mb": round(peak / 1e6, 2)}


def run_size(n: int, url: str, storage_options: dict[str, Any] | None, counter: Counter, probe: int,
             stream_check: bool, workers: int) -> dict[str, Any]:
    """All phases at one N on one storage (see the module docstring)."""
    so = storage_options
    root_url, src_url = f"{url}/ds", f"{url}/src"
    root = DatasetRoot.open(root_url, so)
    src_fs, src_path = fsspec.core.url_to_fs(src_url, **(so or {}))
    make_sources(src_fs, src_path, n)
    factory = FactoryConfig()
    chash = config_hash(factory)
    cfg = BuildConfig(subjects=src_url, out=root_url, factory=factory, storage_options=so)
    out: dict[str, Any] = {"n": n}
    counter.reset()
    p, out["startup_fresh_s"] = timed(plan, cfg)
    assert len(p.todo) == n and not p.done, (len(p.todo), len(p.done))
    out["requests_startup_fresh"] = counter.take()
    del p
    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:  # like several actors committing at once
        for _ in pool.map(lambda i: commit_fake(root, sid_of(i), src_url, chash), range(n), chunksize=64):
            pass
    out["commit_wall_per_subject_s"] = (time.perf_counter() - t0) / n
    out["commit_workers"] = workers
    out["requests_commit"] = counter.take()
    times = []
    for j in range(probe):  # one more subject's commit at N (its own ids, outside the source list)
        sid = f"probe{j:05d}"
        times.append(timed(commit_fake, root, sid, src_url, chash)[1])
    out["commit_one_at_n_s"] = statistics.median(times)
    counter.take()
    fin, out["finalize_s"] = timed(finalize, root)
    assert fin["complete_subjects"] == n + probe and fin["manifest_shards"] == n + probe, fin
    out["requests_finalize"] = counter.take()
    p, out["startup_rerun_s"] = timed(plan, cfg)
    assert len(p.done) == n and not p.todo, (len(p.done), len(p.todo))
    out["requests_startup_rerun"] = counter.take()
    del p
    out["memory_startup_rerun"] = plan_memory(cfg)
    counter.take()
    pairs = [(f"{src_url}/{sid_of(i)}", sid_of(i)) for i in range(n)]
    _, out["duplicate_check_s"] = timed(lambda: sum(1 for _ in check_unique(pairs)))
    if stream_check:
        def first_sample() -> Any:
            return next(iter(ShardDataset(root_url, storage_options=so)))
        s, out["stream_first_sample_s"] = timed(first_sample)
        assert s["__key__"]
    per = {}
    for k in ("requests_startup_fresh", "requests_commit", "requests_finalize"):
        if out[k] is not None:
            per[k] = {kind: round(v / n, 3) for kind, v in out[k].items()}
    if per:
        run_total = {kind: round(sum(per[k][kind] for k in per), 3) for kind in (*KINDS, "OTHER")}
        out["requests_per_subject"] = {**per, "run_total": run_total, "run_total_all": round(sum(run_total.values()), 3),
                                       "startup_rerun": {kind: round(v / n, 3) for kind, v in
                                                         out["requests_startup_rerun"].items()}}
    return out


def fresh_plan_memory(n: int, tmp: Path) -> dict[str, float]:
    """Retained and peak MB of a fresh run's start-up (every subject to do: the driver's todo)."""
    src = tmp / f"mem-{n}"
    make_sources(fsspec.filesystem("file"), str(src / "src"), n)
    return plan_memory(BuildConfig(subjects=str(src / "src"), out=str(src / "ds"), factory=FactoryConfig()))


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| storage | N | commit one at N (ms) | all N commits, wall per subject (ms) | start-up fresh (s) | start-up rerun (s) | "
            "finalize (s) | dup check (s) | stream 1st sample (s) | start-up memory MB: fresh retained/peak, rerun "
            "retained/peak | "
            "S3 req/subject run (LIST/HEAD/GET/PUT/DELETE = total) | S3 req/subject rerun start-up |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        rq = r.get("requests_per_subject")
        run = (" / ".join(f"{rq['run_total'][k]:g}" for k in KINDS) + f" = {rq['run_total_all']:g}") if rq else "-"
        rerun = f"{sum(rq['startup_rerun'].values()):.3g}" if rq else "-"
        mem = r["memory_startup_rerun"]
        fresh = r.get("memory_startup_fresh")
        mem_s = (f"{fresh['retained_mb']:.1f}/{fresh['peak_mb']:.1f}, " if fresh else "-, ") + \
            f"{mem['retained_mb']:.1f}/{mem['peak_mb']:.1f}"
        stream = f"{r['stream_first_sample_s']:.2f}" if "stream_first_sample_s" in r else "-"
        lines.append(f"| {r['storage']} | {r['n']} | {1e3 * r['commit_one_at_n_s']:.2f} | {1e3 * r['commit_wall_per_subject_s']:.2f} | "
                     f"{r['startup_fresh_s']:.2f} | {r['startup_rerun_s']:.2f} | {r['finalize_s']:.2f} | "
                     f"{r['duplicate_check_s']:.3f} | {stream} | {mem_s} | "
                     f"{run} | {rerun} |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib  # lazy: only for the figure

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: as above

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for storage in sorted({r["storage"] for r in rows}):
        rs = sorted((r for r in rows if r["storage"] == storage), key=lambda r: r["n"])
        ns = [r["n"] for r in rs]
        axes[0].plot(ns, [1e3 * r["commit_one_at_n_s"] for r in rs], "o-", label=f"{storage}: commit one subject")
        axes[0].plot(ns, [1e3 * (r["startup_rerun_s"] + r["finalize_s"]) / r["n"] for r in rs], "s--",
                     label=f"{storage}: start-up + finalize per subject")
        if all("requests_per_subject" in r for r in rs):
            axes[1].plot(ns, [r["requests_per_subject"]["run_total_all"] for r in rs], "o-",
                         label=f"{storage}: requests per subject, whole run")
    axes[0].set(xscale="log", yscale="log", xlabel="subjects N", ylabel="ms", title="bookkeeping cost per subject")
    axes[1].axhline(10, ls=":", color="gray", label="goal: at most 10")
    axes[1].set(xscale="log", xlabel="subjects N", ylabel="requests", title="S3 requests per subject (moto)",
                ylim=(0, 12))
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,10000,100000", help="local N values (comma-separated)")
    ap.add_argument("--s3-sizes", default="1000,10000", help="S3 (moto) N values; empty = none")
    ap.add_argument("--quick", action="store_true", help="small N (local 200,2000; S3 200)")
    ap.add_argument("--workers", type=int, default=4, help="threads committing the N subjects (the timed probes "
                    "commit one at a time)")
    ap.add_argument("--probe", type=int, default=30, help="extra subjects committed at N (median time)")
    ap.add_argument("--out", default=str(REPO / "bench" / "out" / "scale.json"))
    ap.add_argument("--plot", default=str(REPO / "bench" / "out" / "scale.png"))
    ap.add_argument("--replot", action="store_true", help="only print the table and redraw the plot of --out")
    a = ap.parse_args(argv)
    if a.replot:
        rows = json.loads(Path(a.out).read_text())["rows"]
        print(table(rows))
        plot(rows, Path(a.plot))
        return
    if a.quick:
        a.sizes, a.s3_sizes = "200,2000", "200"
    sizes = [int(x) for x in a.sizes.split(",") if x]
    s3_sizes = [int(x) for x in a.s3_sizes.split(",") if x]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="facegs-scale-") as tmp:
        for n in sizes:
            t0 = time.perf_counter()
            r = run_size(n, f"{tmp}/local-{n}", None, Counter(None), a.probe, stream_check=True, workers=a.workers)
            r["storage"] = "local"
            r["memory_startup_fresh"] = fresh_plan_memory(n, Path(tmp))
            r["wall_s"] = round(time.perf_counter() - t0, 1)
            rows.append(r)
            print(f"[scale] local N={n}: {r['wall_s']} s", flush=True)
            save(a, rows)  # after each size: a later failure loses nothing measured
            shutil.rmtree(f"{tmp}/local-{n}", ignore_errors=True)
            shutil.rmtree(f"{tmp}/mem-{n}", ignore_errors=True)
        if s3_sizes:
            rows += run_s3(s3_sizes, a.probe, a.workers, lambda s3_rows: save(a, rows + s3_rows))
    save(a, rows)
    print(table(rows))
    plot(rows, Path(a.plot))
    print(f"wrote {a.out} and {a.plot}")


def save(a: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    env = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
           "fsspec": fsspec.__version__}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"env": env, "args": vars(a), "rows": rows}, indent=1))


def run_s3(sizes: list[int], probe: int, workers: int, saved: Any) -> list[dict[str, Any]]:
    """The phases on a moto S3 server on loopback, requests counted on the server."""
    import boto3  # lazy: S3 only
    import s3fs  # lazy: S3 only
    from s3_server import CountingMotoServer  # lazy: the bench's moto server

    for var, val in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                     ("AWS_DEFAULT_REGION", "us-east-1"), ("NO_PROXY", "127.0.0.1,localhost")):
        os.environ[var] = val
    server = CountingMotoServer()
    rows = []
    try:
        so = {"key": "testing", "secret": "testing", "endpoint_url": server.endpoint_url}
        client = boto3.client("s3", endpoint_url=server.endpoint_url, region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        for n in sizes:
            bucket = f"scale-{n}-{uuid.uuid4().hex[:6]}"
            client.create_bucket(Bucket=bucket)
            s3fs.S3FileSystem.clear_instance_cache()
            t0 = time.perf_counter()
            r = run_size(n, f"s3://{bucket}", so, Counter(server), probe, stream_check=False, workers=workers)
            r["storage"] = "s3-moto"
            r["wall_s"] = round(time.perf_counter() - t0, 1)
            rows.append(r)
            print(f"[scale] s3 N={n}: {r['wall_s']} s", flush=True)
            saved(rows)
    finally:
        server.stop()
    return rows


if __name__ == "__main__":
    main()
