"""Label refinement benchmark: what the factory ships, scored against exact labels, on held-out subjects.

For every rig x held-out subject x label arm, the factory's own subject pipeline runs with its
defaults (``facegs.factory.subject.refine`` with ``FactoryConfig().refine(seed)``, run as its two
halves ``facegs.fit.loop.fit_subject`` + ``facegs.factory.subject.place`` so the fitted scene can be kept: fit preset
``cpu_demo``, 32 novel views at 128 px, head frame by ``facegs.headframe.place``, default clean-up):

1. the capture views are labelled (``clean`` = exact labels, ``parser`` = the base parser with flip
   TTA, ``pixel:0.5`` / ``lr_swap:0.4`` / ``pose:1`` = seeded noise models on the exact labels);
2. the subject is refined; its ground-truth-free quality (``facegs.factory.quality``) is recorded;
3. scored against the generator's exact labels rendered at the same cameras, two ways:
   - **user renders**: the factory's novel views (cameras in the *estimated* head frame), binned by
     their *true* pose: what a trainer gets;
   - **grid**: a fixed yaw x pitch grid in the *true* head frame (identical for every arm);
   each with ignore counted as wrong (the headline) and ignore excluded; per-class IoU; the ignore
   fraction of the foreground; wrong-side left/right pixels;
4. the head frame's error against the true frame, its reliability and source, and the error the
   previous estimator (template fit on the most opaque Gaussians) would have made.

    .venv/bin/python bench/label_refinement.py --rig facescape --threads 1   # one rig per process
    .venv/bin/python bench/label_refinement.py --report                      # tables, plots, JSON

Per-fit records are cached under ``bench/out/label_refinement/fits/`` (a rerun skips finished fits),
the fitted scenes under ``scenes/`` (``--rescore`` redoes everything after the fit on them: head frame,
left/right side rule, renders, scores);
``--report`` writes summary.md, summary.json and plots (F1 by |yaw| per rig, quality vs true mIoU).
An experiment on the fit's options runs into its own root, e.g.
``--fit-override label_grad_to_geometry=true consensus_outliers=true --out bench/out/label_refinement_co``
(each record keeps its overrides; ``--report --out`` that root scores it like the default's).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facegs.core.cameras import rotation_angle_deg, w2c_to_head_pose  # noqa: E402
from facegs.core.errors import FitError  # noqa: E402
from facegs.core.hashing import to_builtin  # noqa: E402
from facegs.core.labels import get_label_set  # noqa: E402
from facegs.core.manifest import load_manifest  # noqa: E402
from facegs.evaluate.confusion import ConfusionMatrix  # noqa: E402
from facegs.evaluate.metrics import PoseBinnedEvaluator  # noqa: E402
from facegs.evaluate.plots import plot_f1_vs_yaw  # noqa: E402
from facegs.factory.config import FactoryConfig  # noqa: E402
from facegs.factory.quality import combine  # noqa: E402
from facegs.factory.subject import place  # noqa: E402
from facegs.fit.config import FitConfig  # noqa: E402
from facegs.fit.loop import FitResult, fit_subject  # noqa: E402
from facegs.headframe.estimate import estimate_head_frame  # noqa: E402
from facegs.label.views import initial_labels  # noqa: E402
from facegs.parser.checkpoint import load_parser  # noqa: E402
from facegs.render.poses import cameras_for_poses, match_capture_intrinsics  # noqa: E402
from facegs.render.views import render_novel_views  # noqa: E402
from facegs.splat.scene import activated, load_tensors, save_tensors  # noqa: E402
from facegs.synth.generate import generate_subject  # noqa: E402
from facegs.synth.params import HeadParams  # noqa: E402
from facegs.synth.raytrace import render_views as synth_render  # noqa: E402

OUT = Path("bench/out/label_refinement")
RIGS = ("facescape", "nersemble", "frontal8")
# held-out subjects: seeds used nowhere else (base parser, demo, tests and other benchmarks draw theirs
# from hashed namespaces); 5006 long hair + glasses, 5010 glasses + cap, 5024 long hair + beanie
SEEDS = (5006, 5010, 5024)
ARMS = {"clean": "noise:pixel:0.0", "parser": "parser", "pixel 0.5": "noise:pixel:0.5",
        "lr_swap 0.4": "noise:lr_swap:0.4", "pose 1": "noise:pose:1"}
YAWS = np.arange(-90.0, 90.1, 15.0)
PITCHES = np.array([-20.0, 0.0, 20.0])
LS = get_label_set("celebamask19")
PAIRS = [(LS.index(a), LS.index(b)) for a, b in LS.flip_pairs]


def old_head_frame(params: dict[str, torch.Tensor], max_points: int = 40_000) -> np.ndarray | None:
    """The estimator the factory used before: the template fit on the most opaque Gaussians."""
    means, _, _, opac = activated(params)
    order = torch.argsort(opac, descending=True)[:max_points]
    try:
        return estimate_head_frame(means[order].detach().double().numpy(),
                                   torch.softmax(params["logits"][order].detach().float(), -1).numpy(),
                                   weights=opac[order].detach().double().numpy()).world_from_head
    except ValueError:
        return None


class Scores:
    """Confusion matrices (ignore as wrong / ignore excluded), pose-binned F1, ignore and L/R counts."""

    def __init__(self) -> None:
        self.wrong, self.excl = ConfusionMatrix(19), ConfusionMatrix(19)
        self.hi_wrong = ConfusionMatrix(19)  # |yaw| >= 60
        self.binned = PoseBinnedEvaluator("celebamask19")
        self.ignored = self.fg = self.lr_wrong = self.lr_total = 0
        # what the capture views saw (facegs.render.observed): truth foreground and right labels by the
        # number of views that saw the rendered surface (0 / 1 / 2+), and the scores with the unseen
        # pixels ignored as well (CleanupConfig.ignore_unobserved), both ways
        self.by_views = {k: [0, 0] for k in ("0", "1", "2+")}
        self.unobs_wrong, self.unobs_excl = ConfusionMatrix(19), ConfusionMatrix(19)
        self.unobs_ignored = 0

    def update(self, labels: np.ndarray, ignore: np.ndarray, gt: np.ndarray, yaw: float, pitch: float,
               observed: np.ndarray | None = None) -> None:
        shown = np.where(ignore, 255, labels).astype(np.uint8)
        if observed is not None:
            fg_ = gt > 0
            right = shown == gt
            for k, sel in (("0", observed == 0), ("1", observed == 1), ("2+", observed >= 2)):
                self.by_views[k][0] += int((fg_ & sel).sum())
                self.by_views[k][1] += int((fg_ & sel & right).sum())
            ign2 = ignore | ((observed == 0) & (labels > 0))
            self.unobs_wrong.update(np.where(ign2, 255, labels).astype(np.uint8), gt)
            self.unobs_excl.update(labels, np.where(ign2, 255, gt))
            self.unobs_ignored += int((ign2 & fg_).sum())
        self.wrong.update(shown, gt)
        self.excl.update(labels, np.where(ignore, 255, gt))
        if abs(yaw) >= 60:
            self.hi_wrong.update(shown, gt)
        self.binned.update(shown, gt, yaw=yaw, pitch=pitch)
        fg = gt > 0
        self.fg += int(fg.sum())
        self.ignored += int((ignore & fg).sum())
        for a, b in PAIRS:
            sided = (gt == a) | (gt == b)
            self.lr_total += int(sided.sum())
            self.lr_wrong += int((((gt == a) & (labels == b)) | ((gt == b) & (labels == a))).sum())

    def summary(self) -> dict:
        return {"miou": self.wrong.miou(), "miou_ignore_excluded": self.excl.miou(), "miou_60_90": self.hi_wrong.miou(),
                "iou_per_class": {LS.classes[k]: float(v) for k, v in enumerate(self.wrong.iou_per_class())
                                  if np.isfinite(v)},
                "gt_pixels": {LS.classes[k]: int(n) for k, n in enumerate(self.wrong.matrix.sum(1)) if n},
                "ignore_fraction": self.ignored / max(self.fg, 1),
                "lr_wrong_fraction": self.lr_wrong / max(self.lr_total, 1), "lr_sided_pixels": self.lr_total,
                "pose_state": self.binned.state_dict(),
                "observed": {"fg_px_by_views": {k: v[0] for k, v in self.by_views.items()},
                             "right_px_by_views": {k: v[1] for k, v in self.by_views.items()},
                             "ignore_unobserved": {
                                 "miou": self.unobs_wrong.miou(), "miou_ignore_excluded": self.unobs_excl.miou(),
                                 "ignore_fraction": self.unobs_ignored / max(self.fg, 1),
                                 "iou_per_class": {LS.classes[k]: float(v) for k, v in
                                                   enumerate(self.unobs_wrong.iou_per_class()) if np.isfinite(v)}}}}


def high_yaw_truth_classes(rec: dict) -> tuple[float, dict[str, int]]:
    """The user renders at |yaw| >= 60 (ignore counted as wrong) from the fit's pose-binned state:
    the mIoU over the classes present in the truth there only, and the pixels of each class that
    is predicted but absent from the truth (the headline mIoU counts such a class at IoU 0)."""
    ev = PoseBinnedEvaluator.from_state_dict(rec["user"]["pose_state"])
    cm = ConfusionMatrix(LS.num_classes)
    for lo, b in zip(ev.yaw_bins[:-1], ev.yaw):
        if lo >= 60:
            cm.merge(b.cm)
    gt = cm.matrix.sum(1) + cm.invalid_pred
    pred = cm.matrix.sum(0)
    iou = cm.iou_per_class()
    spurious = {LS.classes[k]: int(pred[k]) for k in range(LS.num_classes) if gt[k] == 0 and pred[k] > 0}
    return float(np.mean(iou[gt > 0])), spurious


def label_free_errors(hd: dict, T: np.ndarray) -> dict:
    """Errors of the two label-free frames the placement's fallback can use, measured on every fit
    (fallen back or not), from its recorded estimates: x from the symmetry plane (signed by the rig),
    the rotation about it and the origin from the face's profile (``profile+symmetry``) or from the
    rig (``cameras+symmetry``). Rotation in degrees, origin in world units (metres here)."""
    if "symmetry" not in hd or "rig_frame" not in hd:
        return {}
    rig = np.array(hd["rig_frame"])
    n = np.array(hd["symmetry"]["normal"])
    n = n if n @ rig[:3, 0] >= 0 else -n
    d = float(hd["symmetry"]["offset"]) * float(n @ np.array(hd["symmetry"]["normal"]))

    def err(up: np.ndarray, origin: np.ndarray) -> tuple[float, float]:
        up = up - (up @ n) * n
        up /= np.linalg.norm(up)
        R = np.stack([n, up, np.cross(n, up)], axis=1)
        return rotation_angle_deg(R, T[:3, :3]), float(np.linalg.norm(origin - T[:3, 3]))

    o = rig[:3, 3]
    out = dict(zip(("rig_deg", "rig_origin"), err(rig[:3, 1], o - (o @ n - d) * n)))
    if "profile" in hd:
        out.update(zip(("profile_deg", "profile_origin"), err(np.array(hd["profile"]["up"]),
                                                              np.array(hd["profile"]["origin"]))))
        out["profile_cost_rel"] = hd["profile"]["cost_rel"]
    return out


def score(views, cams, T: np.ndarray, gts: list[dict]) -> dict:
    """Scores of rendered views against the truth at the same cameras, binned by the true pose."""
    s = Scores()
    for rv, (w2c, _), g in zip(views, cams, gts):
        yaw, pitch, _ = w2c_to_head_pose(w2c, T)
        s.update(rv.labels, rv.ignore, g["labels"], yaw, pitch, rv.observed)
    return s.summary()


def run_fit(rig: str, seed: int, arm: str, a: argparse.Namespace, parser) -> dict:
    name = f"{rig}_{seed}_{arm.replace(' ', '_')}"
    out = OUT / "fits" / f"{name}.json"
    if out.is_file() and not a.rescore:
        return json.loads(out.read_text())
    sdir = OUT / "subjects" / rig
    sid = f"s{seed}"
    if not (sdir / sid / "subject.json").is_file():
        generate_subject(sdir, sid, seed, rig=rig, res=a.res)
    m = load_manifest(sdir / sid)
    T = m.world_from_head
    params_h = HeadParams.from_dict(m.source["params"])
    bg = m.source.get("background", "world")
    spec = ARMS[arm]
    fc = FactoryConfig(labels="noise:pixel:0.0" if spec == "parser" else spec, n_renders=a.renders)
    cfg = fc.refine(seed)
    if a.keep_isolated_label_pixels:  # the ablation of SupportConfig.drop_isolated (side by side with --rescore)
        cfg = dataclasses.replace(cfg, support=dataclasses.replace(cfg.support, drop_isolated=False))
    if a.fit_override:  # an experiment on the fit's options (its own --out: the records say which)
        cfg = dataclasses.replace(cfg, fit=dataclasses.replace(cfg.fit, **a.fit_override))
    t0 = time.perf_counter()
    labels = initial_labels(m, "parser:x" if spec == "parser" else fc.labels, parser=parser, flip_tta=True, seed=seed)
    # the fitted scene is kept (scenes/NAME.pt): --rescore reruns everything after the fit on it
    scene = OUT / "scenes" / f"{name}.pt"
    if scene.is_file():
        params, info = load_tensors(scene)
        fit = FitResult({k: v.detach() for k, v in params.items()}, [], info["meta"]["summary"])
        fit_s = info["meta"]["fit_s"]
    else:
        fit = fit_subject(m, cfg.fit, labels=labels)
        fit_s = round(time.perf_counter() - t0, 1)
        scene.parent.mkdir(parents=True, exist_ok=True)
        save_tensors(scene, fit.params, meta={"summary": to_builtin(fit.summary), "fit_s": fit_s})
    try:
        r = place(m, cfg, fit, labels=labels)
    except FitError as e:  # the factory refuses the subject (recorded as a failure, never shipped)
        rec = {"rig": rig, "seed": seed, "arm": arm, "labels": spec, "fit_s": fit_s,
               "failed": str(e)}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rec, indent=1))
        return rec
    t_fit = fit_s
    err = rotation_angle_deg(r.head_frame.world_from_head[:3, :3], T[:3, :3])
    old = old_head_frame(r.fit.params)
    W, H = r.width, r.height
    # (a) the renders a user gets: cameras in the estimated frame, truth at the same cameras
    user_views = list(r.views())
    gts = synth_render(params_h, [(K, w2c, W, H) for w2c, K in r.cameras], T, bg)
    user = score(user_views, r.cameras, T, gts)
    # (b) the fixed grid in the true frame
    dist, focal, _, _ = match_capture_intrinsics(m, W, H, world_from_head=T)
    grid_cams = cameras_for_poses(np.array([(y, p, 0.0) for p in PITCHES for y in YAWS]), T, dist, (W, H, focal))
    grid_gts = synth_render(params_h, [(K, w2c, W, H) for w2c, K in grid_cams], T, bg)
    grid_views = list(render_novel_views(r.params, grid_cams, W, H, r.head_frame.world_from_head, cfg.fit,
                                         r.cleanup, progress=False, captures=r.captures))
    grid = score(grid_views, grid_cams, T, grid_gts)
    hd = r.head_frame.diagnostics
    rec = {"rig": rig, "seed": seed, "arm": arm, "labels": spec, "fit_override": a.fit_override, "fit_s": round(t_fit, 1),
           "fit_eval": r.fit.summary.get("eval"), "n_gaussians": r.fit.summary.get("n_gaussians"),
           "head_frame": {"error_deg": err, "source": r.head_frame_source, "reliability": hd.get("reliability"),
                          "checks": hd.get("checks"), "reasons": hd.get("reasons"),
                          "landmarks_found": hd.get("landmarks_found"),
                          "labels_only_error_deg": (rotation_angle_deg(np.array(hd["labels_frame"])[:3, :3], T[:3, :3])
                                                    if "labels_frame" in hd else None),
                          "previous_estimator_error_deg": None if old is None else rotation_angle_deg(old[:3, :3],
                                                                                                      T[:3, :3]),
                          "label_free": label_free_errors(hd, T)},
           "quality": r.quality, "user": user, "grid": grid}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rec, indent=1, default=float))
    return rec


def run(rig: str, a: argparse.Namespace) -> None:
    torch.set_num_threads(a.threads)
    parser = load_parser(a.parser) if "parser" in a.arms else None
    for seed in a.seeds:
        for arm in a.arms:
            t0 = time.perf_counter()
            rec = run_fit(rig, seed, arm, a, parser)
            if "failed" in rec:
                print(f"[{rig}] s{seed} {arm:12s} FAILED (the factory refuses it): {rec['failed']}", flush=True)
                continue
            print(f"[{rig}] s{seed} {arm:12s} head frame {rec['head_frame']['error_deg']:5.1f} deg "
                  f"({rec['head_frame']['source']}, rel {rec['head_frame']['reliability']}) "
                  f"user mIoU {100 * rec['user']['miou']:5.1f} (60-90: {100 * rec['user']['miou_60_90']:5.1f}) "
                  f"ignore {100 * rec['user']['ignore_fraction']:4.1f}% quality {rec['quality']['quality']:.3f} "
                  f"[{time.perf_counter() - t0:.0f} s]", flush=True)


# ----------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------


def _spearman(x: list[float], y: list[float]) -> float:
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return float(np.corrcoef(rx, ry)[0, 1]) if len(x) > 2 else float("nan")


def report(a: argparse.Namespace) -> str:
    recs = [json.loads(p.read_text()) for p in sorted((OUT / "fits").glob("*.json"))]
    refused = [r for r in recs if "failed" in r]
    recs = [r for r in recs if "failed" not in r]
    for r in recs:  # the score from its stored terms with today's formula (fits cached before a change)
        r["quality"]["quality"] = combine(r["quality"])
    if not recs:
        return "no fits yet"
    pct = lambda x: "-" if x is None or not np.isfinite(x) else f"{100 * x:.1f}"  # noqa: E731
    lines = [f"{len(recs)} fits (rigs x held-out subjects x label arms); fit preset cpu_demo, 32 renders at 128 px; "
             "mIoU with ignore counted as wrong unless said otherwise.", ""]
    by = {}
    for r in recs:
        by.setdefault((r["rig"], r["arm"]), []).append(r)
    lines += ["| rig | arm | fits | user mIoU | user 60-90 | vs clean | grid 60-90 | 60-90 ignore excl. | ignore % | "
              "L/R wrong % | head frame err (max) | previous estimator (max) | quality |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    table = {}
    for rig in RIGS:
        clean = by.get((rig, "clean"))
        for arm in ARMS:
            rs = by.get((rig, arm))
            if not rs:
                continue
            f = lambda k, s="user", rs=rs: float(np.mean([r[s][k] for r in rs]))  # noqa: E731
            hi = f("miou_60_90")
            ratio = hi / float(np.mean([r["user"]["miou_60_90"] for r in clean])) if clean else float("nan")
            hf = [r["head_frame"]["error_deg"] for r in rs]
            old = [r["head_frame"]["previous_estimator_error_deg"] for r in rs
                   if r["head_frame"]["previous_estimator_error_deg"] is not None]
            table[f"{rig}/{arm}"] = {"user_miou": f("miou"), "user_60_90": hi, "ratio_vs_clean": ratio,
                                     "grid_60_90": f("miou_60_90", "grid"), "ignore": f("ignore_fraction"),
                                     "lr_wrong": f("lr_wrong_fraction"), "head_frame_mean": float(np.mean(hf)),
                                     "head_frame_max": float(np.max(hf)),
                                     "previous_max": float(np.max(old)) if old else None,
                                     "quality": float(np.mean([r["quality"]["quality"] for r in rs]))}
            t = table[f"{rig}/{arm}"]
            hi_excl = float(np.mean([r["user"]["miou_ignore_excluded"] for r in rs]))
            lines.append(f"| {rig} | {arm} | {len(rs)} | {pct(t['user_miou'])} | {pct(hi)} | "
                         f"{'-' if not np.isfinite(ratio) else f'{ratio:.2f}'} | {pct(t['grid_60_90'])} | "
                         f"{pct(hi_excl)} | {pct(t['ignore'])} | {pct(t['lr_wrong'])} | "
                         f"{t['head_frame_mean']:.1f} ({t['head_frame_max']:.1f}) | "
                         f"{'-' if not old else f'{np.mean(old):.1f} ({np.max(old):.1f})'} | {t['quality']:.3f} |")
    # how much of each arm's 60-90 gap is classes predicted where the truth has none
    lines += ["", "User renders at |yaw| >= 60 over the classes present in the truth there (a class predicted but "
              "absent from the truth is IoU 0 in the headline mIoU, whatever its size), and those classes' pixels "
              "(summed over the arm's fits):", "",
              "| rig | arm | user 60-90 | truth classes only | vs clean | vs clean, truth classes only | "
              "predicted, absent from the truth (px) |", "|---|---|---:|---:|---:|---:|---|"]
    for rig in RIGS:
        base = base_t = None  # the clean arm's (first in ARMS)
        for arm in ARMS:
            rs = by.get((rig, arm))
            if not rs:
                continue
            hi = float(np.mean([r["user"]["miou_60_90"] for r in rs]))
            ht = [high_yaw_truth_classes(r) for r in rs]
            hi_t = float(np.mean([h[0] for h in ht]))
            spur: dict[str, int] = {}
            for _, sp in ht:
                for k, v in sp.items():
                    spur[k] = spur.get(k, 0) + v
            if arm == "clean":
                base, base_t = hi, hi_t
            table[f"{rig}/{arm}"]["user_60_90_truth_classes"] = hi_t
            table[f"{rig}/{arm}"]["spurious_60_90_px"] = spur
            rel = f"{hi / base:.2f} | {hi_t / base_t:.2f}" if base and base_t else "- | -"
            lines.append(f"| {rig} | {arm} | {pct(hi)} | {pct(hi_t)} | {rel} | "
                         f"{', '.join(f'{k} {v}' for k, v in sorted(spur.items(), key=lambda kv: -kv[1])) or '-'} |")
    # per-class IoU with clean labels, classes with >= 500 truth pixels over a subject's renders
    lines += ["", "Per-class IoU of the user renders with clean labels (classes with >= 500 truth pixels over the "
              "subject's renders; mean over subjects):", ""]
    classes = [c for c in LS.classes if c != "background"]
    lines += ["| rig | " + " | ".join(classes) + " |", "|---|" + "---:|" * len(classes)]
    per_class = {}
    for rig in RIGS:
        rs = by.get((rig, "clean"), [])
        cells = []
        for c in classes:
            vals = [r["user"]["iou_per_class"].get(c) for r in rs if r["user"]["gt_pixels"].get(c, 0) >= 500]
            vals = [v for v in vals if v is not None]
            per_class[f"{rig}/{c}"] = float(np.mean(vals)) if vals else None
            cells.append(pct(per_class[f"{rig}/{c}"]))
        if rs:
            lines.append(f"| {rig} | " + " | ".join(cells) + " |")
    # what the capture views saw: the labels' accuracy where 0 / 1 / 2+ views saw the rendered surface
    obs = [r for r in recs if "observed" in r["user"]]
    if obs:
        lines += ["", "What the capture views saw (facegs.render.observed), user renders: share of the truth foreground "
                  "by the number of capture views that saw the rendered surface, the labels' pixel accuracy there "
                  "(ignore counted as wrong), and the scores with the unseen pixels ignored too "
                  "(`--ignore-unobserved`; mIoU ignore counted as wrong / excluded):", "",
                  "| rig | arm | fits | unseen % | right % unseen / 1 view / 2+ | mIoU | with --ignore-unobserved | "
                  "mIoU ignore excl. | with --ignore-unobserved | ignore % | with --ignore-unobserved |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        by_o: dict[tuple[str, str], list[dict]] = {}
        for r in obs:
            by_o.setdefault((r["rig"], r["arm"]), []).append(r)
        for rig in RIGS:
            for arm in ARMS:
                rs = by_o.get((rig, arm))
                if not rs:
                    continue
                fgv = {k: sum(r["user"]["observed"]["fg_px_by_views"][k] for r in rs) for k in ("0", "1", "2+")}
                okv = {k: sum(r["user"]["observed"]["right_px_by_views"][k] for r in rs) for k in ("0", "1", "2+")}
                iu = [r["user"]["observed"]["ignore_unobserved"] for r in rs]
                m = lambda xs: float(np.mean(xs))  # noqa: E731
                row = {"unseen": fgv["0"] / max(sum(fgv.values()), 1),
                       "right": {k: okv[k] / fgv[k] if fgv[k] else None for k in fgv},
                       "miou": m([r["user"]["miou"] for r in rs]), "miou_iu": m([x["miou"] for x in iu]),
                       "excl": m([r["user"]["miou_ignore_excluded"] for r in rs]),
                       "excl_iu": m([x["miou_ignore_excluded"] for x in iu]),
                       "ignore": m([r["user"]["ignore_fraction"] for r in rs]), "ignore_iu": m([x["ignore_fraction"] for x in iu])}
                table.setdefault(f"{rig}/{arm}", {})["observed"] = row
                lines.append(f"| {rig} | {arm} | {len(rs)} | {pct(row['unseen'])} | "
                             + " / ".join(pct(row["right"][k]) for k in ("0", "1", "2+"))
                             + f" | {pct(row['miou'])} | {pct(row['miou_iu'])} | {pct(row['excl'])} | "
                             f"{pct(row['excl_iu'])} | {pct(row['ignore'])} | {pct(row['ignore_iu'])} |")
    # the label-free frames the fallback can use, on every fit (whatever its source)
    lf = [r["head_frame"].get("label_free") or {} for r in recs]
    lf = [x for x in lf if "profile_deg" in x]
    if lf:
        col = lambda k: np.array([x[k] for x in lf], float)  # noqa: E731
        pd, rd = col("profile_deg"), col("rig_deg")
        lines += ["", f"Label-free head frames (x from the symmetry plane; the rotation about it and the origin from "
                  f"the face's profile or from the rig), measured on all {len(lf)} fits whatever their source: "
                  f"profile {pd.mean():.1f} deg mean, {pd.max():.1f} max, {int((pd > 5).sum())} above 5, origin "
                  f"{100 * col('profile_origin').mean():.1f} cm; rig {rd.mean():.1f} deg mean, {rd.max():.1f} max, "
                  f"{int((rd > 5).sum())} above 5, origin {100 * col('rig_origin').mean():.1f} cm; the profile closer "
                  f"on {int((pd < rd).sum())} fits; profile cost {1000 * col('profile_cost_rel').min():.2f}-"
                  f"{1000 * col('profile_cost_rel').max():.2f} mm (template)."]
        table["label_free"] = {"fits": len(lf), "profile_deg_mean": float(pd.mean()), "profile_deg_max": float(pd.max()),
                               "rig_deg_mean": float(rd.mean()), "rig_deg_max": float(rd.max()),
                               "profile_origin_mean": float(col("profile_origin").mean()),
                               "rig_origin_mean": float(col("rig_origin").mean())}
    # quality without ground truth vs the truth
    q = [r["quality"]["quality"] for r in recs]
    true = [r["user"]["miou"] for r in recs]
    rho = _spearman(q, true)
    term_rho = {k: _spearman([float(r["quality"][k]) for r in recs], true)
                for k in ("consensus_confidence", "consensus_margin", "input_miou", "psnr", "head_frame_reliability",
                          "ignore_fraction", "face_parts", "unobserved_fraction")
                if all(r["quality"].get(k) is not None for r in recs)}
    # side by side: the score as it was before face_parts joined it
    term_rho["quality_without_face_parts"] = _spearman([combine({**r["quality"], "face_parts": 1.0}) for r in recs],
                                                       true)
    flagged_ok = [r for r in recs if r["head_frame"]["error_deg"] > 10]
    silent = [r for r in flagged_ok if (r["head_frame"]["reliability"] or 0) >= 0.5 and
              r["head_frame"]["source"].startswith("labels")]
    lines += ["", f"Quality score vs true user-render mIoU over all {len(recs)} fits: Spearman rank correlation "
              f"{rho:.2f} (each term alone: " + ", ".join(f"{k} {v:.2f}" for k, v in term_rho.items()) + f"). Fits with a final head-frame error > 10 deg: {len(flagged_ok)}; of those accepted as "
              f"reliable (silent failures): {len(silent)}. Fits the factory refuses (a failure with the reasons, "
              f"never shipped; not in the tables): {len(refused)}"
              + "".join(f"\n- {r['rig']}/s{r['seed']}/{r['arm']}: {r['failed']}" for r in refused)]
    # what a --min-quality gate would do: fits kept and dropped, and their true mIoU
    gate = {}
    lines += ["", "| `--min-quality` | fits kept | true mIoU kept (mean, min) | fits dropped | true mIoU dropped (mean) |",
              "|---:|---:|---:|---:|---:|"]
    for thr in (0.2, 0.4, 0.5, 0.6, 0.7):
        kept = [t for s, t in zip(q, true) if s >= thr]
        dropped = [t for s, t in zip(q, true) if s < thr]
        gate[str(thr)] = {"kept": len(kept), "dropped": len(dropped),
                          "kept_mean": float(np.mean(kept)) if kept else None,
                          "kept_min": float(np.min(kept)) if kept else None,
                          "dropped_mean": float(np.mean(dropped)) if dropped else None}
        g = gate[str(thr)]
        lines.append(f"| {thr} | {len(kept)} | {pct(g['kept_mean'])}, {pct(g['kept_min'])} | {len(dropped)} | "
                     f"{pct(g['dropped_mean'])} |")
    summary = {"table": table, "per_class_clean": per_class, "spearman_quality_vs_true_miou": rho,
               "spearman_terms": term_rho,
               "min_quality_gate": gate,
               "head_frame_over_10deg": [f"{r['rig']}/s{r['seed']}/{r['arm']}" for r in flagged_ok],
               "silent_failures": [f"{r['rig']}/s{r['seed']}/{r['arm']}" for r in silent],
               "refused": [{k: r[k] for k in ("rig", "seed", "arm", "failed")} for r in refused],
               "fits": [{k: r[k] for k in ("rig", "seed", "arm", "fit_s")} | {
                   "quality": r["quality"]["quality"], "true_miou": r["user"]["miou"],
                   "head_frame_error_deg": r["head_frame"]["error_deg"]} for r in recs]}
    (OUT / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    for rig in RIGS:
        arms = {arm: by[(rig, arm)] for arm in ARMS if (rig, arm) in by}
        if arms:
            merged = {}
            for arm, rs in arms.items():
                ev = PoseBinnedEvaluator.from_state_dict(rs[0]["user"]["pose_state"])
                for r in rs[1:]:
                    ev.merge(PoseBinnedEvaluator.from_state_dict(r["user"]["pose_state"]))
                merged[arm] = ev.summary()
            plot_f1_vs_yaw(merged, OUT / f"f1_vs_yaw_{rig}.png", title=f"{rig} rig: refined labels by |yaw|")
    _scatter(q, true, [r["arm"] for r in recs], OUT / "quality_vs_true.png", rho)
    text = "\n".join(lines)
    (OUT / "summary.md").write_text(text + "\n")
    return text


def _scatter(q: list[float], true: list[float], arms: list[str], path: Path, rho: float) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for arm in ARMS:
        pts = [(a_, b_) for a_, b_, c in zip(q, true, arms) if c == arm]
        if pts:
            ax.scatter(*zip(*pts), label=arm, s=24)
    ax.set_xlabel("quality score (no ground truth)")
    ax.set_ylabel("true mIoU of the renders (ignore = wrong)")
    ax.set_title(f"quality vs truth (Spearman {rho:.2f})")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def compare(base: Path, alt: Path) -> str:
    """Side by side: the fits of ``alt`` (an experiment's root) against the same fits (rig, seed, arm)
    of ``base``, per rig x arm: means of both and of their difference. Writes ``alt/compare.json``."""
    def load(root: Path) -> dict:
        return {p.stem: json.loads(p.read_text()) for p in sorted((root / "fits").glob("*.json"))}

    b, x = load(base), load(alt)
    common = [k for k in x if k in b and "user" in x[k] and "user" in b[k]]
    if not common:
        raise SystemExit(f"no fit of {alt} has a scored counterpart in {base}")

    def terms(r: dict) -> dict:
        u = r["user"]
        return {"user mIoU": 100 * u["miou"], "user 60-90": 100 * u["miou_60_90"], "grid mIoU": 100 * r["grid"]["miou"],
                "ignore %": 100 * u["ignore_fraction"], "head frame deg": r["head_frame"]["error_deg"],
                "quality": r["quality"]["quality"]}

    keys = list(terms(x[common[0]]))
    groups: dict[tuple[str, str], list[str]] = {}
    for k in common:
        groups.setdefault((x[k]["rig"], x[k]["arm"]), []).append(k)
    order = {r: i for i, r in enumerate(RIGS)} | {a: i for i, a in enumerate(ARMS)}
    lines = [f"{alt} against {base} (fit overrides {x[common[0]].get('fit_override')}), same fits; "
             "each cell: base -> experiment (mean over fits)", "",
             "| rig | arm | fits | " + " | ".join(keys) + " |", "|---|---|---:|" + "---:|" * len(keys)]
    table = {}
    for (rig, arm), ks in sorted(groups.items(), key=lambda g: (order[g[0][0]], order[g[0][1]])):
        tb = {t: float(np.mean([terms(b[k])[t] for k in ks])) for t in keys}
        tx = {t: float(np.mean([terms(x[k])[t] for k in ks])) for t in keys}
        table[f"{rig}/{arm}"] = {"fits": ks, "base": tb, "experiment": tx}
        fmt = {t: ("{:.3f}" if t == "quality" else "{:.1f}") for t in keys}
        lines.append(f"| {rig} | {arm} | {len(ks)} | " + " | ".join(
            f"{fmt[t].format(tb[t])} -> {fmt[t].format(tx[t])}" for t in keys) + " |")
    cls = sorted({c for k in common for c in x[k]["user"]["iou_per_class"]} & set(LS.classes[1:]))
    per_class = {}
    for c in cls:  # classes with >= 500 truth pixels in a fit, clean arm only (the goal's measure)
        ks = [k for k in common if x[k]["arm"] == "clean" and x[k]["user"]["gt_pixels"].get(c, 0) >= 500]
        if ks:
            per_class[c] = {r: (float(np.mean([100 * b[k]["user"]["iou_per_class"][c] for k in ks if b[k]["rig"] == r])),
                                float(np.mean([100 * x[k]["user"]["iou_per_class"][c] for k in ks if x[k]["rig"] == r])))
                            for r in RIGS if any(x[k]["rig"] == r for k in ks)}
    lines += ["", "Per-class IoU of the user renders with clean labels (classes >= 500 truth px in a fit), base -> experiment:",
              "", "| class | " + " | ".join(RIGS) + " |", "|---|" + "---:|" * len(RIGS)]
    for c, v in per_class.items():
        lines.append(f"| {c} | " + " | ".join(f"{v[r][0]:.1f} -> {v[r][1]:.1f}" if r in v else "-" for r in RIGS) + " |")
    (alt / "compare.json").write_text(json.dumps({"base": str(base), "experiment": str(alt), "table": table,
                                                  "per_class_clean": per_class}, indent=1))
    return "\n".join(lines)


def parse_fit_overrides(p: argparse.ArgumentParser, items: list[str]) -> dict:
    """``FIELD=JSON`` strings -> {field: value}; an unknown field or a value that is not JSON is a usage error."""
    known = {f.name for f in dataclasses.fields(FitConfig)}
    out = {}
    for it in items:
        k, sep, v = it.partition("=")
        if not sep or k not in known:
            p.error(f"--fit-override {it!r}: want FIELD=JSON with FIELD one of FitConfig's fields")
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError as e:
            p.error(f"--fit-override {it!r}: the value is not JSON ({e})")
    return out


def main() -> int:
    global OUT
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rig", choices=RIGS)
    p.add_argument("--report", action="store_true")
    p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--res", type=int, default=128)
    p.add_argument("--renders", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--parser", default="models/base_parser/base.pt",
                   help="base parser for the parser arm (the shipped one; bench/base_parser.py trains it)")
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--rescore", action="store_true",
                   help="redo everything after the fit (head frame, side rule, renders, scores) on the kept scenes")
    p.add_argument("--keep-isolated-label-pixels", action="store_true",
                   help="ablation: isolated label pixels vote in the label-support rule (facegs.fit.support)")
    p.add_argument("--compare", metavar="BASE_ROOT",
                   help="side by side: the fits under --out against the same fits under BASE_ROOT (e.g. the "
                        "default's, bench/out/label_refinement); prints a table, writes --out/compare.json")
    p.add_argument("--fit-override", nargs="+", default=[], metavar="FIELD=JSON",
                   help="experiment: FitConfig fields other than the defaults, e.g. label_grad_to_geometry=true "
                        "(use its own --out; each record keeps the overrides)")
    a = p.parse_args()
    a.fit_override = parse_fit_overrides(p, a.fit_override)
    if a.fit_override and Path(a.out) == OUT:
        p.error("--fit-override needs its own --out (the default's records and scenes are the defaults')")
    OUT = Path(a.out)
    if a.rig:
        run(a.rig, a)
    if a.report:
        print(report(a))
    if a.compare:
        print(compare(Path(a.compare), OUT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
