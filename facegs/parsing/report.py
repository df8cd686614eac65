"""Compare face parser checkpoints on a test set, binned by head pose, in a report people can review.

Pipeline (library side of ``python -m ray_jobs.evaluate``; no Ray here)::

    dirs = make_test_set(out / "test", n_subjects=8, seed=0, res=128)       # optional: synthetic grid
    items = load_test_items(dirs)                                           # or a user's labelled set
    results = evaluate_checkpoints({"base": "base.pt", "ft": "ft.pt"}, items)
    write_report(results, out / "report", base_name="base")
    print(summary_table(results, "base"))

Conventions (``docs/conventions.md``):

- Poses are head-relative, in degrees: yaw 0 / pitch 0 is frontal, **yaw +90 puts the camera on
  the subject's left** (seeing the left ear), pitch > 0 is a camera above the head.
- |yaw| bins are those of :class:`facegs.metrics.PoseBinnedEvaluator`: 0-30, 30-60, 60-75, 75-90
  (``[lo, hi)``, the last closed; |yaw| > 90 counts in the last bin). Pitch bins are on signed pitch.
  Views whose pose is unknown (a flat CelebAMask-HQ-style set without ``poses.csv``) count in
  ``overall`` only.
- Everything is scored in the canonical label set ``celebamask19``: ground truth in another set is
  remapped through :func:`facegs.labels.remap` (classes without a canonical counterpart become the
  ignore index 255 and are not scored); parser outputs are mapped by :class:`ParserModel`.
- Predictions are made at each label map's resolution (an image of another size is resized to its
  label map first, e.g. CelebAMask-HQ's 1024 px images with 512 px masks).
- Scores in JSON are fractions in [0, 1] (``None`` where undefined); markdown tables show percent.
  A delta is ``checkpoint - base`` of the same score in the same bin.
"""

from __future__ import annotations

import csv
import html
import itertools
import json
import math
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm.auto import tqdm

from facegs.errors import InputError
from facegs.fsutil import atomic_write_bytes
from facegs.imageio import encode_rgb, read_labels, read_rgb
from facegs.labels import CANONICAL, IGNORE_INDEX, get_label_set, remap
from facegs.metrics import ConfusionMatrix, PoseBinnedEvaluator, summary_to_markdown
from facegs.parsing.data import ViewItem

#: Default synthetic grid (degrees, rig frame): yaw -90..90 every 15, three pitch rows.
DEFAULT_YAWS: tuple[float, ...] = tuple(float(y) for y in range(-90, 91, 15))
DEFAULT_PITCHES: tuple[float, ...] = (-30.0, 0.0, 30.0)
#: Class groups shown per checkpoint at extreme yaw and in ``group_f1_vs_yaw.png``.
REPORT_GROUPS: tuple[str, ...] = ("eyes", "brows", "nose", "mouth", "ears", "skin", "hair")
#: Scores compared between checkpoints (keys of a bin summary; group F1 separately).
DELTA_KEYS: tuple[str, ...] = ("mean_f1", "miou", "pixel_acc", "overall_f1", "cc_error")
TEST_SET_META = "test_set.json"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")
IMAGE_EXTS = (".png", ".jpg", ".jpeg")
LABEL_DIRS = ("labels", "masks", "mask")


# ----------------------------------------------------------------------------------------------
# test sets
# ----------------------------------------------------------------------------------------------


def make_test_set(
    out_dir: str | os.PathLike,
    n_subjects: int,
    seed: int = 0,
    res: int = 128,
    yaws: Sequence[float] = DEFAULT_YAWS,
    pitches: Sequence[float] = DEFAULT_PITCHES,
    background: str = "world",
    progress: bool = False,
) -> list[Path]:
    """Synthetic held-out subjects ``out_dir/test_XXXX`` rendered on a yaw x pitch grid; their dirs.

    Each subject has ``len(yaws) * len(pitches)`` views (``res`` x ``res`` px; pitch rows outer,
    yaw inner: ``cam_000`` is ``(pitches[0], yaws[0])``) with exact ground-truth labels
    (``gt_labels``). ``yaws``/``pitches`` are RIG angles in degrees (yaw +90 = camera on the
    subject's left); each subject's head is posed a few degrees off the rig centre, so the views'
    head-relative poses recorded in ``subject.json`` (which the reports bin by) differ from the grid
    by a few degrees. Seeds come from their own namespace (``derive_seed("eval-test", seed, i)``),
    so test subjects never coincide with the base parser's training subjects (``"base-train"``).

    Existing complete subjects are kept (an interrupted run resumes). ``out_dir/test_set.json``
    records the grid; asking for a different grid, seed, resolution or background in the same
    directory raises ``ValueError`` rather than mixing two test sets (a larger ``n_subjects`` extends
    the set).
    """
    from facegs.parsing.noise import derive_seed
    from facegs.synth.generate import generate_subject
    from facegs.synth.rigs import custom

    if n_subjects < 1:
        raise ValueError(f"n_subjects must be >= 1, got {n_subjects}")
    yaws = [float(y) for y in yaws]
    pitches = [float(p) for p in pitches]
    if not yaws or not pitches:
        raise ValueError("the grid needs at least one yaw and one pitch")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec = {"format": "facegs.test_set", "version": 1, "seed": int(seed), "res": int(res), "yaws": yaws,
            "pitches": pitches, "background": background, "seed_namespace": "eval-test"}
    meta_path = out / TEST_SET_META
    if meta_path.is_file():
        old = json.loads(meta_path.read_text(encoding="utf-8"))
        diff = [k for k in spec if old.get(k) != spec[k]]
        if diff:
            raise ValueError(f"{out} holds a test set made with other settings ({', '.join(diff)}: "
                             f"{ {k: old.get(k) for k in diff} } != { {k: spec[k] for k in diff} }); "
                             f"use another directory")
    else:
        atomic_write_bytes(meta_path, json.dumps(spec, indent=1).encode("utf-8"))
    grid = list(itertools.product(pitches, yaws))
    views = custom([y for _, y in grid], [p for p, _ in grid], width=res, height=res)
    dirs = []
    for i in tqdm(range(n_subjects), desc="test subjects", disable=not progress, dynamic_ncols=True):
        sid = f"test_{i:04d}"
        d = out / sid
        if not (d / "subject.json").is_file():
            s = derive_seed("eval-test", int(seed), i) & 0x7FFFFFFF
            generate_subject(out, sid, s, rig=views, res=res, background=background, overwrite=d.exists())
        dirs.append(d)
    return dirs


def _read_poses_csv(path: Path) -> dict[str, tuple[float, float]]:
    """``name,yaw,pitch`` rows (header required) -> ``{name or stem: (yaw, pitch)}``."""
    poses: dict[str, tuple[float, float]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        cols = set(reader.fieldnames or [])
        if not {"name", "yaw", "pitch"} <= cols:
            raise InputError(f"poses.csv needs the columns name,yaw,pitch; found {sorted(cols)}", path=str(path))
        for k, row in enumerate(reader, start=2):
            try:
                yaw, pitch = float(row["yaw"]), float(row["pitch"])
            except (TypeError, ValueError):
                raise InputError(f"line {k}: yaw/pitch must be numbers, got {row['yaw']!r}, {row['pitch']!r}",
                                 path=str(path)) from None
            name = row["name"].strip()
            poses[name] = poses[Path(name).stem] = (yaw, pitch)
    return poses


def _check_label_values(path: str, label_set: str) -> None:
    lab = read_labels(path)
    k = get_label_set(label_set).num_classes
    bad = np.unique(lab[(lab >= k) & (lab != IGNORE_INDEX)])
    if bad.size:
        raise InputError(f"label map holds values {bad[:10].tolist()} outside label set '{label_set}' "
                         f"({k} classes, 255 = ignore): wrong --label-set, or a colour-coded map?", path=path)


def _flat_items(root: Path, label_set: str | None) -> list[ViewItem]:
    img_dir = root / "images"
    lab_dir = next((root / d for d in LABEL_DIRS if (root / d).is_dir()), None)
    if lab_dir is None:
        raise InputError(f"no subject.json below it, and no images/ + labels/ (flat CelebAMask-HQ style) in it",
                         path=str(root))
    if label_set is None:
        raise InputError("a flat images/ + labels/ directory needs its label set declared (--label-set; "
                         "'celebamask_hq' = the official CelebAMask-HQ mask order, 'celebamask19' = BiSeNet order)",
                         field="label_set", path=str(root))
    get_label_set(label_set)  # unknown name -> KeyError listing the sets
    images = {p.stem: p for p in sorted(img_dir.iterdir()) if p.suffix.lower() in IMAGE_EXTS}
    labels = {p.stem: p for p in sorted(lab_dir.iterdir()) if p.suffix.lower() == ".png"}
    poses = _read_poses_csv(root / "poses.csv") if (root / "poses.csv").is_file() else {}
    items = []
    nan = float("nan")
    for stem in sorted(images.keys() & labels.keys()):
        yaw, pitch = poses.get(images[stem].name, poses.get(stem, (nan, nan)))
        items.append(ViewItem(root.name, stem, str(images[stem].resolve()), str(labels[stem].resolve()),
                              label_set, yaw, pitch))
    for it in items[:8]:  # catch a wrong --label-set early (values beyond the set would be ignored silently)
        _check_label_values(it.labels, label_set)
    return items


def _subject_items(subject_dir: Path, label_set: str | None, label_field: str | None) -> list[ViewItem]:
    from facegs.manifest import load_manifest
    from facegs.parsing.data import collect_views

    m = load_manifest(subject_dir)
    if label_set is not None and label_set != m.label_set:
        raise InputError(f"--label-set '{label_set}' declared but the subject's manifest says '{m.label_set}'",
                         subject=m.subject_id, field="label_set", path=str(subject_dir / "subject.json"))
    field = label_field
    if field is None:
        for cand in ("gt_labels", "labels"):
            if m.views and all(getattr(v, cand) is not None for v in m.views):
                field = cand
                break
        else:
            raise InputError("no label field ('gt_labels' or 'labels') that every view has", subject=m.subject_id,
                             path=str(subject_dir / "subject.json"))
    return collect_views([subject_dir], label_field=field)


def load_test_items(
    source: str | os.PathLike | Iterable[str | os.PathLike],
    label_set: str | None = None,
    label_field: str | None = None,
) -> list[ViewItem]:
    """The labelled views of a test set as :class:`ViewItem` s (absolute paths, poses in degrees).

    ``source``: a directory (or several) holding either

    - facegs subject directories (any depth, each with ``subject.json``): reference labels are
      ``label_field`` (default: ``gt_labels`` when every view of a subject has it, else ``labels``);
      the manifest's label set is used (a ``label_set`` that contradicts it is an error); poses are
      the manifest's head-relative poses (NaN where a view has none); or
    - a flat CelebAMask-HQ-style directory: ``images/*.png|jpg`` and ``labels/*.png`` (or ``masks/``)
      matched by file stem, label maps as 8-bit class indices in the declared ``label_set``
      (required; e.g. ``celebamask_hq``). Pose is unknown (NaN) unless ``poses.csv`` (columns
      ``name,yaw,pitch``; name = file name or stem; facegs conventions) gives it. ``subject_id`` is
      the directory's name, ``view_id`` the file stem.

    Raises :class:`InputError` when a source does not exist or nothing labelled is found.
    """
    sources = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    from facegs.manifest import find_subject_dirs

    items: list[ViewItem] = []
    for src in sources:
        root = Path(src)
        if not root.is_dir():
            raise InputError("test set directory does not exist", path=str(root))
        subject_dirs = find_subject_dirs(root)
        if subject_dirs:
            for sd in subject_dirs:
                items.extend(_subject_items(sd, label_set, label_field))
        else:
            items.extend(_flat_items(root, label_set))
    if not items:
        raise InputError("the test set is empty: no labelled views found", path=", ".join(str(s) for s in sources))
    return items


def read_canonical_labels(item: ViewItem) -> np.ndarray:
    """The reference label map of ``item`` [H, W] uint8 in ``celebamask19`` indices (255 = ignore)."""
    return remap(read_labels(item.labels), item.label_set, CANONICAL)


def _read_pair(item: ViewItem) -> tuple[np.ndarray, np.ndarray]:
    """(RGB [H, W, 3] uint8 at the label map's size, canonical labels [H, W] uint8)."""
    rgb, gt = read_rgb(item.image), read_canonical_labels(item)
    h, w = gt.shape
    if rgb.shape[:2] != (h, w):
        shrink = rgb.shape[0] > h or rgb.shape[1] > w
        rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return rgb, gt


# ----------------------------------------------------------------------------------------------
# evaluation
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ViewScore:
    """Scores of one checkpoint on one view (fractions; NaN where undefined)."""

    miou: float
    mean_f1: float
    pixel_acc: float


class EvalResults(dict):
    """``{checkpoint name: PoseBinnedEvaluator}`` (insertion order = the order given) plus what the
    report needs beyond the pooled metrics:

    - ``test_items``: the evaluated :class:`ViewItem` s;
    - ``per_view``: ``{name: [ViewScore per item]}`` (same order as ``test_items``);
    - ``parsers``: ``{name: ParserModel}`` (kept to draw the contact sheet; drop the results, or call
      :meth:`release`, to free their memory);
    - ``sources``: ``{name: checkpoint path or "<in-memory>"}``; ``flip_tta``, ``seconds``.

    A plain ``dict`` of evaluators is accepted by :func:`write_report` too (no contact sheet then).
    """

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.test_items: list[ViewItem] = []
        self.per_view: dict[str, list[ViewScore]] = {}
        self.parsers: dict[str, Any] = {}
        self.sources: dict[str, str] = {}
        self.flip_tta = False
        self.seconds = 0.0

    def release(self) -> None:
        """Drop the loaded parsers (the metrics stay)."""
        self.parsers = {}


def check_name(name: str) -> str:
    """A checkpoint name must be short and file-name safe: ``[A-Za-z0-9][A-Za-z0-9_.+-]*``, <= 64 chars."""
    if not NAME_RE.match(name):
        raise InputError(f"checkpoint name {name!r} must match {NAME_RE.pattern} (used in file names and tables)",
                         field="name")
    return name


def _load_checkpoint(name: str, src: Any, device: str, label_set: str | None) -> tuple[Any, str]:
    from facegs.parsing.checkpoint import ParserModel, load_parser

    if isinstance(src, ParserModel):
        return src, "<in-memory>"
    path = Path(src)
    if not path.is_file():
        raise InputError(f"checkpoint '{name}': file not found", field=name, path=str(path))
    try:
        return load_parser(path, device=device, label_set=label_set), str(path)
    except InputError as e:
        raise InputError(f"checkpoint '{name}': {e.message}", field=name, path=str(path)) from e
    except (KeyError, ValueError, RuntimeError) as e:
        raise InputError(f"checkpoint '{name}': cannot load ({type(e).__name__}: {e})", field=name,
                         path=str(path)) from e


def _pose(v: float) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None


def evaluate_checkpoints(
    ckpts: Mapping[str, Any],
    items: Sequence[ViewItem],
    flip_tta: bool = False,
    device: str = "cpu",
    batch_size: int = 16,
    *,
    label_sets: Mapping[str, str] | None = None,
    yaw_bins: Sequence[float] = (0, 30, 60, 75, 90),
    pitch_bins: Sequence[float] | None = (-90, -30, -15, 15, 30, 90),
    progress: bool = True,
) -> EvalResults:
    """Evaluate every checkpoint on every view; returns ``{name: PoseBinnedEvaluator}`` (an :class:`EvalResults`).

    ``ckpts``: ``{name: path}`` (facegs checkpoint, bare BiSeNet state_dict or TorchScript; see
    :func:`facegs.parsing.checkpoint.load_parser`) or ``{name: ParserModel}``; names must satisfy
    :func:`check_name`. ``label_sets``: declared output label set per name (TorchScript files
    without embedded metadata). All checkpoints are loaded first (a bad file fails before any work,
    with an :class:`InputError` naming the checkpoint). Each batch of views is read once and parsed
    by every checkpoint; the argmax prediction (optionally flip TTA, left/right aware) is scored at
    the label map's resolution against the canonical ground truth. Views with an unknown (NaN) pose
    count in ``overall`` only. Deterministic for a given device: identical weights give identical
    metrics.
    """
    if not ckpts:
        raise ValueError("no checkpoints to evaluate")
    if not items:
        raise InputError("the test set is empty: nothing to evaluate")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    from facegs.parsing.label_views import predict_images

    label_sets = dict(label_sets or {})
    res = EvalResults()
    res.test_items = list(items)
    res.flip_tta = bool(flip_tta)
    for name, src in ckpts.items():
        check_name(name)
        res.parsers[name], res.sources[name] = _load_checkpoint(name, src, device, label_sets.get(name))
        res[name] = PoseBinnedEvaluator(CANONICAL, yaw_bins, pitch_bins)
        res.per_view[name] = []
    K = get_label_set(CANONICAL).num_classes
    t0 = time.perf_counter()
    bar = tqdm(total=len(items), desc="evaluate", disable=not progress, dynamic_ncols=True)
    for start in range(0, len(items), batch_size):
        chunk = res.test_items[start:start + batch_size]
        pairs = []
        for it in chunk:
            try:
                pairs.append(_read_pair(it))
            except InputError as e:
                raise e.with_context(subject=it.subject_id, view=it.view_id) from None
        imgs = [p[0] for p in pairs]
        for name, parser in res.parsers.items():
            for probs, (_, gt), it in zip(predict_images(parser, imgs, flip_tta), pairs, chunk, strict=True):
                pred = probs.argmax(dim=0).numpy().astype(np.uint8)
                res[name].update(pred, gt, yaw=_pose(it.yaw), pitch=_pose(it.pitch))
                cm = ConfusionMatrix(K).update(pred, gt)
                res.per_view[name].append(ViewScore(cm.miou(), cm.mean_f1(), cm.pixel_accuracy()))
        bar.update(len(chunk))
    bar.close()
    res.seconds = time.perf_counter() - t0
    return res


# ----------------------------------------------------------------------------------------------
# derived numbers: deltas, the extreme-yaw bin
# ----------------------------------------------------------------------------------------------


def _sub(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else float(a) - float(b)


def _bin_delta(s: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    d: dict[str, Any] = {k: _sub(s.get(k), b.get(k)) for k in DELTA_KEYS}
    d["group_f1"] = {g: _sub(v, b["group_f1"].get(g)) for g, v in s["group_f1"].items()}
    d["f1_per_class"] = {c: _sub(v, b["f1_per_class"].get(c)) for c, v in s["f1_per_class"].items()}
    return d


def summary_deltas(summary: Mapping[str, Any], base: Mapping[str, Any]) -> dict[str, Any]:
    """Per-bin ``summary - base`` (fractions) for ``overall``, every |yaw| bin and every pitch bin.

    Bins are matched by position and must have the same edges. Each bin holds ``lo``, ``hi``,
    ``label`` and the deltas of :data:`DELTA_KEYS`, ``group_f1`` and ``f1_per_class`` (``None``
    where either side is undefined, e.g. an empty bin).
    """
    out: dict[str, Any] = {"overall": _bin_delta(summary["overall"], base["overall"])}
    for axis in ("yaw", "pitch"):
        if [(x["lo"], x["hi"]) for x in summary[axis]] != [(x["lo"], x["hi"]) for x in base[axis]]:
            raise ValueError(f"cannot compare summaries with different {axis} bins")
        out[axis] = [{"lo": s["lo"], "hi": s["hi"], "label": s["label"], **_bin_delta(s, b)}
                     for s, b in zip(summary[axis], base[axis])]
    return out


def extreme_summary(ev: PoseBinnedEvaluator, extreme_yaw: float = 60.0) -> dict[str, Any]:
    """Scores of the union of the |yaw| bins whose lower edge is >= ``extreme_yaw`` (one bin summary
    with ``lo``, ``hi``, ``label``, ``n_images``, ``mean_f1``, ``group_f1``, ...; pooled over pixels like
    every bin). With the default bins and ``extreme_yaw=60`` that is |yaw| 60-90."""
    state = ev.state_dict()
    edges = list(state["yaw_bins"])
    idx = [i for i in range(len(edges) - 1) if edges[i] >= extreme_yaw]
    lo = edges[idx[0]] if idx else float(extreme_yaw)
    hi = edges[-1] if edges else 90.0
    merged = PoseBinnedEvaluator(ev.label_set, (lo, hi), None, ev.min_area, ev.ignore_index, ev.connectivity)
    st = merged.state_dict()
    bins = [state["yaw"][i] for i in idx]
    if bins:
        acc = bins[0]
        for b in bins[1:]:
            acc = {"confusion": {**acc["confusion"],
                                 "matrix": (np.asarray(acc["confusion"]["matrix"]) + b["confusion"]["matrix"]).tolist(),
                                 "invalid_pred": (np.asarray(acc["confusion"]["invalid_pred"])
                                                  + b["confusion"]["invalid_pred"]).tolist()},
                   "n_images": acc["n_images"] + b["n_images"],
                   "cc_abs": (np.asarray(acc["cc_abs"]) + b["cc_abs"]).tolist(),
                   "cc_n": (np.asarray(acc["cc_n"]) + b["cc_n"]).tolist()}
        st["yaw"] = [acc]
    out = PoseBinnedEvaluator.from_state_dict(st).summary()["yaw"][0]
    out["label"] = f">={lo:g}"
    return out


def _summaries(results: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: ev.summary() for name, ev in results.items()}


def _base(results: Mapping[str, Any], base_name: str | None) -> str:
    if not results:
        raise ValueError("no results to report")
    if base_name is None:
        return next(iter(results))
    if base_name not in results:
        raise ValueError(f"base '{base_name}' is not among the checkpoints {list(results)}")
    return base_name


# ----------------------------------------------------------------------------------------------
# tables
# ----------------------------------------------------------------------------------------------


def _pct(x: float | None, signed: bool = False) -> str:
    if x is None or not math.isfinite(x):
        return "–"
    return f"{100 * x:+.2f}" if signed else f"{100 * x:.2f}"


def _md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table with padded columns (readable as plain text too); first column left-aligned."""
    w = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    fmt = lambda r: "| " + " | ".join(c.ljust(w[i]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(r)) + " |"  # noqa: E731
    sep = "|" + "|".join(("-" * (w[i] + 1) + ":") if i else ("-" * (w[i] + 2)) for i in range(len(head))) + "|"
    return [fmt(head), sep, *[fmt(r) for r in rows]]


def _with_deltas(names: list[str], base: str, cells) -> list[list[str]]:
    """Rows ``name`` (values) and, for each non-base name, ``  Δ name - base`` (signed deltas)."""
    rows = []
    for n in names:
        rows.append([n + (" (base)" if n == base and n != "base" else "")] + [_pct(v) for v in cells(n)])
        if n != base:
            rows.append([f"  Δ {n} − {base}"] + [_pct(_sub(v, b), signed=True) for v, b in zip(cells(n), cells(base))])
    return rows


def _main_table(summ: dict[str, dict], ext: dict[str, dict], base: str) -> list[str]:
    first = summ[base]
    head = ["checkpoint"] + [f"{b['label']} (n={b['n_images']})" for b in first["yaw"]]
    head += [f"{ext[base]['label']} (n={ext[base]['n_images']})", f"all (n={first['overall']['n_images']})",
             "mIoU", "pixel acc"]

    def cells(n: str) -> list[float | None]:
        s = summ[n]
        return ([b["mean_f1"] for b in s["yaw"]] + [ext[n]["mean_f1"], s["overall"]["mean_f1"],
                                                      s["overall"]["miou"], s["overall"]["pixel_acc"]])

    return _md_table(head, _with_deltas(list(summ), base, cells))


def _group_table(ext: dict[str, dict], base: str) -> list[str]:
    groups = [g for g in REPORT_GROUPS if g in ext[base]["group_f1"]]
    head = ["checkpoint"] + groups + ["mean F1", "overall F1"]

    def cells(n: str) -> list[float | None]:
        e = ext[n]
        return [e["group_f1"].get(g) for g in groups] + [e["mean_f1"], e["overall_f1"]]

    return _md_table(head, _with_deltas(list(ext), base, cells))


def _pitch_table(summ: dict[str, dict], base: str) -> list[str]:
    head = ["checkpoint"] + [f"{b['label']} (n={b['n_images']})" for b in summ[base]["pitch"]]
    return _md_table(head, _with_deltas(list(summ), base, lambda n: [b["mean_f1"] for b in summ[n]["pitch"]]))


def summary_table(results: Mapping[str, PoseBinnedEvaluator], base_name: str | None = None,
                  extreme_yaw: float = 60.0) -> str:
    """One screen of text: mean F1 (%) per |yaw| bin, at |yaw| >= ``extreme_yaw``, overall, mIoU and
    pixel accuracy per checkpoint, each non-base checkpoint followed by its delta row (percentage
    points vs ``base_name``, default the first checkpoint); then the class-group F1 at extreme yaw.
    Padded markdown tables (paste-able into a PR)."""
    base = _base(results, base_name)
    summ = _summaries(results)
    ext = {n: extreme_summary(ev, extreme_yaw) for n, ev in results.items()}
    lines = ["Mean F1 (%, foreground classes) by |yaw| bin (deg); mIoU and pixel acc over all views:", "",
             *_main_table(summ, ext, base), "",
             f"Class-group F1 (%) at |yaw| {ext[base]['label']} ({ext[base]['n_images']} views):", "",
             *_group_table(ext, base)]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# plots
# ----------------------------------------------------------------------------------------------


def plot_mean_f1_vs_yaw(summaries: Mapping[str, Mapping[str, Any]], base: str, out_png: str | os.PathLike) -> Path:
    """Mean F1 against |yaw| bin centre for every checkpoint (base drawn black and dashed) and, with
    more than one checkpoint, a second panel of the deltas vs base (percentage points)."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from facegs.report_plots import style_yaw_axis

    def series(bins, other=None):
        xs, ys = [], []
        for i, b in enumerate(bins):
            v = b["mean_f1"] if other is None else _sub(b["mean_f1"], other[i]["mean_f1"])
            if b["n_images"] and v is not None:
                xs.append(b["center"])
                ys.append(100 * v)
        return xs, ys

    two = len(summaries) > 1
    fig = Figure(figsize=(10.5 if two else 5.5, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2 if two else 1, squeeze=False)[0]
    edges = sorted({e for s in summaries.values() for b in s["yaw"] for e in (b["lo"], b["hi"])})
    others = [n for n in summaries if n != base]
    for k, n in enumerate([base, *others]):
        xs, ys = series(summaries[n]["yaw"])
        style = dict(color="black", ls="--", lw=2, zorder=3) if n == base else dict(color=f"C{k - 1}", lw=2)
        axes[0].plot(xs, ys, marker="o", ms=4, label=n + (" (base)" if n == base and n != "base" else ""), **style)
        if two and n != base:
            xs, ys = series(summaries[n]["yaw"], summaries[base]["yaw"])
            axes[1].plot(xs, ys, marker="o", ms=4, label=f"{n} − {base}", **style)
    axes[0].set_title("mean F1 (foreground classes)", fontsize=10)
    axes[0].set_ylabel("F1 (%)")
    if two:
        axes[1].axhline(0, color="black", lw=0.8)
        axes[1].set_title(f"Δ mean F1 vs {base}", fontsize=10)
        axes[1].set_ylabel("percentage points")
    for ax in axes:
        style_yaw_axis(ax, edges)
        ax.set_xlabel("|yaw| bin centre (deg)")
        ax.legend(fontsize=8, loc="best")
    fig.suptitle("Face parsing against |yaw|", fontsize=12)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(out_png, buf.getvalue())
    return Path(out_png)


# ----------------------------------------------------------------------------------------------
# contact sheet for a human rating study
# ----------------------------------------------------------------------------------------------


def select_examples(results: EvalResults, base: str, extreme_yaw: float = 60.0, n_examples: int = 12,
                    n_frontal: int = 3) -> list[tuple[str, int]]:
    """Views for the contact sheet: ``[(section, item index)]``.

    With poses: up to ``n_examples`` views with |yaw| >= ``extreme_yaw``, spread evenly over them
    sorted by |yaw| descending (the most extreme first), then the ``n_frontal`` views closest to
    frontal (smallest |yaw| + |pitch|) for reference. Views of unknown pose: ``n_examples +
    n_frontal`` views spread evenly over the base checkpoint's per-view mIoU (worst first).
    """
    items = results.test_items

    def spread(idx: list[int], n: int) -> list[int]:
        if n <= 0 or not idx:
            return []
        if len(idx) <= n:
            return idx
        return [idx[i] for i in np.unique(np.round(np.linspace(0, len(idx) - 1, n)).astype(int))]

    posed = [i for i, it in enumerate(items) if _pose(it.yaw) is not None]
    unposed = [i for i, it in enumerate(items) if _pose(it.yaw) is None]
    key = lambda i: (-abs(items[i].yaw), items[i].subject_id, items[i].view_id)  # noqa: E731
    extreme = sorted([i for i in posed if abs(items[i].yaw) >= extreme_yaw], key=key)
    chosen = [("extreme", i) for i in spread(extreme, n_examples)]
    rest = sorted([i for i in posed if abs(items[i].yaw) < extreme_yaw],
                  key=lambda i: (abs(items[i].yaw) + abs(_pose(items[i].pitch) or 0.0), items[i].subject_id,
                                 items[i].view_id))
    chosen += [("frontal", i) for i in rest[:n_frontal]]
    if unposed:
        pv = results.per_view[base]
        order = sorted(unposed, key=lambda i: (pv[i].miou if math.isfinite(pv[i].miou) else -1.0, i))
        chosen += [("unknown pose", i) for i in spread(order, n_examples + n_frontal)]
    return chosen


def _legend_html() -> str:
    ls = get_label_set(CANONICAL)
    return " ".join(f'<span class="sw"><i style="background:rgb({r},{g},{b})"></i>{html.escape(c)}</span>'
                    for c, (r, g, b) in zip(ls.classes[1:], ls.palette[1:].tolist()))


_CSS = """
body{font-family:system-ui,sans-serif;margin:16px;color:#222}
table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:4px;vertical-align:top;text-align:center;font-size:13px}
th.sec{background:#eee;text-align:left}
img{width:TILEpx;height:TILEpx;image-rendering:pixelated;display:block;margin:auto}
.info{text-align:left;white-space:nowrap}
.name{font-weight:600}.score{color:#555}
body.blind .name,body.blind .score{visibility:hidden}
.rate label{margin:0 2px;font-size:12px}
.sw{display:inline-block;margin:0 8px 2px 0;font-size:12px}
.sw i{display:inline-block;width:11px;height:11px;margin-right:3px;vertical-align:middle;border:1px solid #999}
textarea{width:100%;height:140px;font-family:monospace;font-size:12px}
"""

_JS = r"""
(function(){
  var KEY = 'facegs-ratings:' + document.body.dataset.report;
  function collect(){
    var out = [];
    document.querySelectorAll('input.r:checked').forEach(function(el){
      var row = el.closest('tr').dataset;
      out.push({row: +row.row, subject_id: row.subject, view_id: row.view,
                yaw: row.yaw === '' ? null : +row.yaw, pitch: row.pitch === '' ? null : +row.pitch,
                checkpoint: el.dataset.ckpt, rating: +el.value});
    });
    return out;
  }
  function doc(){
    return {format: 'facegs.ratings', version: 1, report: document.body.dataset.report,
            rater: document.getElementById('rater').value, exported: new Date().toISOString(),
            scale: '1 = unusable .. 5 = perfect', blind: document.body.classList.contains('blind'),
            ratings: collect()};
  }
  function save(){
    try { localStorage.setItem(KEY, JSON.stringify({rater: document.getElementById('rater').value,
                                                     ratings: collect()})); } catch (e) {}
    document.getElementById('count').textContent = collect().length;
  }
  window.exportRatings = function(){
    var text = JSON.stringify(doc(), null, 1);
    document.getElementById('out').value = text;
    var a = document.createElement('a');
    a.href = URL.createObjectURL(new Blob([text], {type: 'application/json'}));
    a.download = 'ratings.json';
    document.body.appendChild(a); a.click(); a.remove();
  };
  window.toggleBlind = function(el){ document.body.classList.toggle('blind', el.checked); };
  try {
    var st = JSON.parse(localStorage.getItem(KEY) || 'null');
    if (st) {
      document.getElementById('rater').value = st.rater || '';
      st.ratings.forEach(function(r){
        var el = document.querySelector('tr[data-row="' + r.row + '"] input.r[data-ckpt="' + r.checkpoint +
                                        '"][value="' + r.rating + '"]');
        if (el) el.checked = true;
      });
    }
  } catch (e) {}
  document.addEventListener('change', save);
  save();
})();
"""


def _fmt_pose(v: float) -> str:
    return "?" if _pose(v) is None else f"{v:+.1f}°"


def write_contact_sheet(results: EvalResults, out_dir: str | os.PathLike, base: str, extreme_yaw: float = 60.0,
                        n_examples: int = 12, n_frontal: int = 3, tile: int = 192, alpha: float = 0.55) -> Path:
    """``out_dir/contact_sheet.html`` + PNGs in ``out_dir/contact_sheet/``: per selected view (see
    :func:`select_examples`) the RGB, the ground-truth overlay and every checkpoint's prediction
    overlay, with yaw/pitch and per-view mIoU (and its delta vs base), plus 1-5 rating radio buttons
    per checkpoint. Ratings are kept in the browser's localStorage and exported as JSON
    (``ratings.json``) by an inline script; a checkbox hides names and scores for blind rating.
    Self-contained: relative image paths, no external resources. Returns the HTML path."""
    from facegs.viz import overlay

    out = Path(out_dir)
    img_dir = out / "contact_sheet"
    img_dir.mkdir(parents=True, exist_ok=True)
    names = list(results)
    chosen = select_examples(results, base, extreme_yaw, n_examples, n_frontal)
    idx = sorted({i for _, i in chosen})
    preds: dict[int, dict[str, np.ndarray]] = {i: {} for i in idx}
    pairs = {i: _read_pair(results.test_items[i]) for i in idx}
    from facegs.parsing.label_views import predict_images

    for name, parser in results.parsers.items():
        for i, probs in zip(idx, predict_images(parser, [pairs[i][0] for i in idx], results.flip_tta)):
            preds[i][name] = probs.argmax(dim=0).numpy().astype(np.uint8)

    def save_png(arr: np.ndarray, fname: str) -> str:
        h, w = arr.shape[:2]
        s = min(1.0, 2 * tile / max(h, w))  # keep at most 2x the display size
        if s < 1.0:
            arr = cv2.resize(arr, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
        atomic_write_bytes(img_dir / fname, encode_rgb(arr, ".png"))
        return f"contact_sheet/{fname}"

    K = get_label_set(CANONICAL).num_classes
    e = html.escape
    rows: list[str] = []
    section = None
    ncol = 3 + len(names)
    for k, (sec, i) in enumerate(chosen):
        it = results.test_items[i]
        rgb, gt = pairs[i]
        if sec != section:
            section = sec
            title = {"extreme": f"Extreme poses (|yaw| ≥ {extreme_yaw:g}°)",
                     "frontal": "Near-frontal reference views",
                     "unknown pose": "Views of unknown pose (spread over the base checkpoint's per-view mIoU)"}[sec]
            rows.append(f'<tr><th class="sec" colspan="{ncol}">{e(title)}</th></tr>')
        stem = f"{k:03d}_{re.sub(r'[^A-Za-z0-9_.-]', '_', it.subject_id)}_{re.sub(r'[^A-Za-z0-9_.-]', '_', it.view_id)}"
        cells = [f'<td class="info"><b>{e(it.subject_id)}</b><br>{e(it.view_id)}<br>yaw {_fmt_pose(it.yaw)}'
                 f'<br>pitch {_fmt_pose(it.pitch)}</td>',
                 f'<td><img src="{save_png(rgb, stem + "_rgb.png")}" alt="RGB"><div>RGB</div></td>',
                 f'<td><img src="{save_png(overlay(rgb, gt, CANONICAL, alpha), stem + "_gt.png")}" alt="GT">'
                 f'<div>ground truth</div></td>']
        miou = {n: ConfusionMatrix(K).update(preds[i][n], gt).miou() for n in names}
        for n in names:
            src = save_png(overlay(rgb, preds[i][n], CANONICAL, alpha), f"{stem}_{n}.png")
            d = "" if n == base else f" ({_pct(miou[n] - miou[base], signed=True)})"
            radios = "".join(f'<label><input type="radio" class="r" name="r{k}_{e(n)}" data-ckpt="{e(n)}" '
                             f'value="{v}">{v}</label>' for v in range(1, 6))
            cells.append(f'<td><img src="{src}" alt="{e(n)}"><div class="name">{e(n)}</div>'
                         f'<div class="score">mIoU {_pct(miou[n])}{d}</div><div class="rate">{radios}</div></td>')
        pose = lambda v: "" if _pose(v) is None else f"{v:.3f}"  # noqa: E731
        rows.append(f'<tr data-row="{k}" data-subject="{e(it.subject_id)}" data-view="{e(it.view_id)}" '
                    f'data-yaw="{pose(it.yaw)}" data-pitch="{pose(it.pitch)}">{"".join(cells)}</tr>')
    head = "".join(f"<th>{e(h)}</th>" for h in ["view", "image", "ground truth", *names])
    import hashlib

    key = "\n".join([*names, *(f"{results.test_items[i].subject_id}/{results.test_items[i].view_id}" for _, i in chosen)])
    report_id = e(f"{out.resolve().name}-{hashlib.sha1(key.encode('utf-8')).hexdigest()[:8]}")  # localStorage key
    doc = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>facegs parser comparison: {report_id}</title>
<style>{_CSS.replace("TILE", str(tile))}</style></head>
<body data-report="{report_id}">
<h1>Face parser comparison at extreme head poses</h1>
<p>Overlays of the canonical <code>celebamask19</code> classes (background untinted). Yaw +90° = camera on the
subject's left; pitch &gt; 0 = camera above. Per-view mIoU in percent (all classes present in the view, background
included); in brackets the difference to the base checkpoint <b>{e(base)}</b>. Flip TTA: {"on" if results.flip_tta else "off"}.</p>
<p>{_legend_html()}</p>
<p>Rate each prediction 1 (unusable) … 5 (perfect). Rater: <input id="rater" size="16">
<label><input type="checkbox" onchange="toggleBlind(this)"> hide names and scores (blind rating)</label>
<button onclick="exportRatings()">Export ratings (JSON)</button> <span id="count">0</span> ratings
(saved in this browser).</p>
<table><thead><tr>{head}</tr></thead><tbody>
{chr(10).join(rows)}
</tbody></table>
<p>Exported JSON (also downloaded as <code>ratings.json</code>):</p>
<textarea id="out" readonly></textarea>
<script>{_JS}</script>
</body></html>
"""
    path = out / "contact_sheet.html"
    atomic_write_bytes(path, doc.encode("utf-8"))
    return path


# ----------------------------------------------------------------------------------------------
# the report
# ----------------------------------------------------------------------------------------------


def _per_view_csv(results: EvalResults, path: Path) -> None:
    import io

    names = list(results)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["subject_id", "view_id", "yaw", "pitch"] + [f"{k}_{n}" for n in names for k in ("miou", "mean_f1", "pixel_acc")])
    f = lambda v: "" if v is None or not math.isfinite(v) else f"{v:.6g}"  # noqa: E731
    for i, it in enumerate(results.test_items):
        vals = [f(getattr(results.per_view[n][i], k)) for n in names for k in ("miou", "mean_f1", "pixel_acc")]
        w.writerow([it.subject_id, it.view_id, f(it.yaw), f(it.pitch), *vals])
    atomic_write_bytes(path, buf.getvalue().encode("utf-8"))


def write_report(
    results: Mapping[str, PoseBinnedEvaluator],
    out_dir: str | os.PathLike,
    base_name: str | None = None,
    extreme_yaw: float = 60.0,
    n_examples: int = 12,
    *,
    n_frontal: int = 3,
    title: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write the comparison report into ``out_dir``; returns the written paths by kind.

    - ``metrics.json``: ``{"format": "facegs.eval_report", "version": 1, "base", "checkpoints":
      {name: path}, "settings", "test_set", "summaries": {name: PoseBinnedEvaluator.summary()},
      "deltas": {name: summary_deltas(summary, base summary)} (the base's are all 0),
      "extreme": {name: extreme_summary()}, "extreme_deltas": {name: ...}, "states": {name:
      state_dict()} (``PoseBinnedEvaluator.from_state_dict`` rebuilds an evaluator), "extra"}``;
    - ``report.md``: the :func:`summary_table` tables (mean F1 per |yaw| bin, mIoU, pixel acc, deltas
      vs base; class-group F1 at |yaw| >= ``extreme_yaw``), mean F1 per pitch bin, links, and the
      full per-checkpoint tables;
    - ``f1_vs_yaw.png`` (mean F1 and its delta vs base against |yaw|) and ``group_f1_vs_yaw.png``
      (one panel per class group of :data:`REPORT_GROUPS`, one line per checkpoint); left out when
      no view has a known pose;
    - ``contact_sheet.html`` + ``contact_sheet/*.png`` and ``per_view.csv`` when ``results`` is an
      :class:`EvalResults` (a plain dict of evaluators has no views to show).

    ``base_name`` defaults to the first checkpoint; ``n_examples`` extreme views (+ ``n_frontal``)
    go into the contact sheet. ``extra``: JSON-able context stored in ``metrics.json``.
    """
    from facegs.report_plots import plot_f1_vs_yaw

    base = _base(results, base_name)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summ = _summaries(results)
    ext = {n: extreme_summary(ev, extreme_yaw) for n, ev in results.items()}
    er = results if isinstance(results, EvalResults) else None
    paths: dict[str, Path] = {}

    n_views = summ[base]["overall"]["n_images"]
    n_posed = sum(b["n_images"] for b in summ[base]["yaw"])
    test_set: dict[str, Any] = {"n_views": n_views, "n_views_in_yaw_bins": n_posed,
                                "n_out_of_range": summ[base]["n_out_of_range"]}
    if er is not None:
        test_set["n_subjects"] = len({it.subject_id for it in er.test_items})
        test_set["label_sets"] = sorted({it.label_set for it in er.test_items})
        test_set["n_unknown_pose"] = sum(_pose(it.yaw) is None for it in er.test_items)
    doc = {
        "format": "facegs.eval_report", "version": 1, "base": base,
        "checkpoints": dict(er.sources) if er is not None else {n: None for n in results},
        "settings": {"extreme_yaw": extreme_yaw, "flip_tta": None if er is None else er.flip_tta,
                     "label_set": CANONICAL, "seconds": None if er is None else round(er.seconds, 2)},
        "test_set": test_set,
        "summaries": summ,
        "deltas": {n: summary_deltas(summ[n], summ[base]) for n in summ},
        "extreme": ext,
        "extreme_deltas": {n: {**{k: ext[n][k] for k in ("lo", "hi", "label", "n_images")},
                               **_bin_delta(ext[n], ext[base])} for n in ext},
        "states": {n: ev.state_dict() for n, ev in results.items()},
        "extra": dict(extra or {}),
    }
    paths["json"] = out / "metrics.json"
    atomic_write_bytes(paths["json"], json.dumps(doc, indent=1, allow_nan=False).encode("utf-8"))

    have_pose = n_posed > 0
    if have_pose:
        paths["plot"] = plot_mean_f1_vs_yaw(summ, base, out / "f1_vs_yaw.png")
        groups = [g for g in REPORT_GROUPS if g in summ[base]["overall"]["group_f1"]]
        paths["group_plot"] = plot_f1_vs_yaw(summ, out / "group_f1_vs_yaw.png", groups=groups,
                                             title="Class-group F1 against |yaw| (first panel: mean F1)")
    if er is not None:
        paths["per_view"] = out / "per_view.csv"
        _per_view_csv(er, paths["per_view"])
        if er.parsers:
            paths["contact_sheet"] = write_contact_sheet(er, out, base, extreme_yaw, n_examples, n_frontal)

    md = [f"# {title or 'Face parser comparison by head pose'}", ""]
    md += [f"Base checkpoint: **{base}**. Test set: {n_views} views"
           + (f" of {test_set['n_subjects']} subjects" if "n_subjects" in test_set else "")
           + f"; {n_posed} with a known pose. Scores in percent, deltas in percentage points "
           f"(checkpoint − base). Mean F1 averages the foreground classes; mIoU all classes (background "
           f"included); one confusion matrix per bin over all its pixels. |yaw| bins on head-relative yaw "
           f"(yaw +90° = camera on the subject's left); label set `{CANONICAL}`"
           + ("" if er is None else f"; flip TTA {'on' if er.flip_tta else 'off'}") + ".", ""]
    if er is not None and test_set["n_unknown_pose"]:
        md += [f"**{test_set['n_unknown_pose']} views have no known pose**: they count in *all* only, "
               f"not in any |yaw| or pitch bin.", ""]
    md += ["## Mean F1 by |yaw| (degrees)", "", *_main_table(summ, ext, base), ""]
    md += [f"## Class-group F1 at |yaw| {ext[base]['label']} ({ext[base]['n_images']} views)", "",
           *_group_table(ext, base), ""]
    if any(b["n_images"] for b in summ[base]["pitch"]):
        md += ["## Mean F1 by pitch (degrees, > 0: camera above)", "", *_pitch_table(summ, base), ""]
    md += ["## Files", ""]
    if have_pose:
        md += ["- ![mean F1 against |yaw|](f1_vs_yaw.png) `f1_vs_yaw.png`",
               "- ![class-group F1 against |yaw|](group_f1_vs_yaw.png) `group_f1_vs_yaw.png`"]
    else:
        md += ["- no plots against |yaw|: no view has a known pose"]
    if "contact_sheet" in paths:
        md += ["- [contact_sheet.html](contact_sheet.html): extreme-pose views side by side, with a 1-5 rating "
               "form per checkpoint (exports JSON)"]
    if "per_view" in paths:
        md += ["- `per_view.csv`: per-view mIoU, mean F1 and pixel accuracy of every checkpoint"]
    md += ["- `metrics.json`: all summaries, per-bin deltas vs base, raw confusion matrices", ""]
    md += ["## Details per checkpoint", ""]
    for n, s in summ.items():
        body = summary_to_markdown(s).replace("\n## ", "\n#### ")
        if body.startswith("## "):
            body = "#### " + body[3:]
        src = "" if er is None else f" — `{er.sources.get(n)}`"
        md += [f"### {n}{src}", "", body, ""]
    paths["markdown"] = out / "report.md"
    atomic_write_bytes(paths["markdown"], "\n".join(md).encode("utf-8"))
    return paths


__all__ = ["DEFAULT_YAWS", "DEFAULT_PITCHES", "REPORT_GROUPS", "EvalResults", "ViewScore", "check_name",
           "make_test_set", "load_test_items", "read_canonical_labels", "evaluate_checkpoints", "summary_deltas",
           "extreme_summary", "summary_table", "plot_mean_f1_vs_yaw", "select_examples", "write_contact_sheet",
           "write_report"]
