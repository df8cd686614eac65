"""A factory run's results, aggregated in bounded memory: counts, percentiles, the first failures.

The driver of a run over a million subjects must not keep a row per subject. Per-subject results
live where they were written anyway (done markers, failure records) and in the run's
``results.parquet`` (one row per subject processed this run, written streaming by
:class:`facegs.core.tables.ParquetStream`); ``summary.json`` holds what :class:`RunStats` keeps:

- counts (done, failed, samples, attempts, retried subjects, error types);
- per timing stage and for the quality score: count, mean, min, max (exact) and the 10/50/90/99th
  percentiles estimated from a fixed reservoir of :data:`RESERVOIR_SIZE` values (Vitter's
  algorithm R with a seeded generator: a uniform sample of everything seen, deterministic for a
  given order of results; the percentiles are exact up to that many subjects, and within about
  ``1/sqrt(RESERVOIR_SIZE)`` in rank beyond);
- the first :data:`MAX_FAILURES_LISTED` failures (id, url, attempts, error type, message) and how
  many more there were (``failures_not_listed``; every one has ``failures/{id}.json``).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import Any

import pyarrow as pa

RESERVOIR_SIZE = 4096


MAX_FAILURES_LISTED = 100


STAGES = ("stage", "label", "fit", "render_and_write")


RESULTS_SCHEMA = pa.schema([
    ("subject_id", pa.string()), ("url", pa.string()), ("status", pa.string()), ("attempts", pa.int32()),
    ("n_samples", pa.int64()), ("n_shards", pa.int32()), ("quality", pa.float64()),
    *[(f"seconds_{s}", pa.float64()) for s in STAGES], ("seconds_total", pa.float64()),
    ("device", pa.string()), ("pid", pa.int64()), ("warnings", pa.list_(pa.string())),
    ("error_type", pa.string()), ("message", pa.string()),
])


class Reservoir:
    """Count, mean, min, max of every value and a fixed-size uniform sample for percentiles."""

    def __init__(self, size: int = RESERVOIR_SIZE, seed: int = 0) -> None:
        self.size, self.rng = size, random.Random(seed)
        self.values: list[float] = []
        self.count, self.total = 0, 0.0
        self.min, self.max = math.inf, -math.inf

    def add(self, x: float | None) -> None:
        if x is None or not math.isfinite(x):
            return
        x = float(x)
        self.count += 1
        self.total += x
        self.min, self.max = min(self.min, x), max(self.max, x)
        if len(self.values) < self.size:
            self.values.append(x)
        else:
            j = self.rng.randrange(self.count)
            if j < self.size:
                self.values[j] = x

    def percentile(self, q: float) -> float | None:
        """The ``q``-th percentile (0..100, linear interpolation) of the sample; None when empty."""
        if not self.values:
            return None
        v = sorted(self.values)
        pos = (len(v) - 1) * q / 100.0
        lo = math.floor(pos)
        hi = min(lo + 1, len(v) - 1)
        return v[lo] + (v[hi] - v[lo]) * (pos - lo)

    def as_dict(self, digits: int = 4) -> dict[str, Any]:
        if not self.count:
            return {"count": 0}
        out: dict[str, Any] = {"count": self.count, "mean": round(self.total / self.count, digits),
                               "min": round(self.min, digits), "max": round(self.max, digits)}
        for q in (10, 50, 90, 99):
            out[f"p{q}"] = round(self.percentile(q), digits)  # type: ignore[arg-type]
        out["exact"] = self.count <= self.size
        return out


class RunStats:
    """The bounded aggregate of a run's per-subject results (see the module docstring)."""

    def __init__(self) -> None:
        self.done = self.failed = self.samples = self.attempts = self.retried = 0
        self.timings = {s: Reservoir(seed=i) for i, s in enumerate((*STAGES, "total"))}
        self.quality = Reservoir(seed=99)
        self.failures: dict[str, dict[str, Any]] = {}
        self.failures_not_listed = 0
        self.error_types: Counter[str] = Counter()

    def add_done(self, subject_id: str, url: str, attempts: int, out: dict[str, Any]) -> dict[str, Any]:
        """Count one finished subject; returns its ``results.parquet`` row."""
        self.done += 1
        self.samples += int(out.get("n_samples") or 0)
        self.attempts += attempts
        self.retried += attempts > 1
        secs = out.get("seconds") or {}
        for s in STAGES:
            self.timings[s].add(secs.get(s))
        total = float(sum(v for v in secs.values() if isinstance(v, (int, float))))
        self.timings["total"].add(total)
        self.quality.add(out.get("quality"))
        return {"subject_id": subject_id, "url": url, "status": "done", "attempts": attempts,
                "n_samples": int(out.get("n_samples") or 0), "n_shards": len(out.get("shards") or []),
                "quality": out.get("quality"), **{f"seconds_{s}": secs.get(s) for s in STAGES},
                "seconds_total": total, "device": out.get("device"), "pid": out.get("pid"),
                "warnings": list(out.get("warnings") or []), "error_type": None, "message": None}

    def add_failure(self, failure: dict[str, Any]) -> dict[str, Any]:
        """Count one subject failed for good (``failure``: id, url, attempts, error type, message);
        returns its ``results.parquet`` row."""
        self.failed += 1
        self.attempts += int(failure["attempts"])
        self.error_types[str(failure["error_type"])] += 1
        short = {k: failure.get(k) for k in ("subject_id", "url", "attempts", "error_type", "message")}
        if len(self.failures) < MAX_FAILURES_LISTED:
            self.failures[str(failure["subject_id"])] = short
        else:
            self.failures_not_listed += 1
        return {**{k: None for k in RESULTS_SCHEMA.names}, **short, "status": "failed", "warnings": []}

    def as_dict(self) -> dict[str, Any]:
        return {"subjects_done": self.done, "subjects_failed": self.failed, "samples_written": self.samples,
                "attempts": self.attempts, "subjects_retried": self.retried,
                "error_types": dict(sorted(self.error_types.items())),
                "timings_s": {k: r.as_dict(3) for k, r in self.timings.items()},
                "quality": self.quality.as_dict(4), "failures": self.failures,
                "failures_not_listed": self.failures_not_listed}
