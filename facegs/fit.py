"""Fit one Gaussian scene per subject to its RGB images and its noisy face-parsing label maps.

One geometry (means, scales, quats, opacities) is shared by colour (SH) and class logits, so the
label maps of all views must agree in 3D: the rendered labels are a multi-view consensus that
denoises the per-view parser output (the method of Gahlawat et al. 2025; see
``/work/shared/reference/method.md``).

Functional core, gsplat style: the caller owns ``params`` (dict of ``nn.Parameter``, see
:mod:`facegs.scene`), ``optimizers`` (one Adam per parameter, one param group each) and the
densification ``strategy_state``; :func:`fit_step` mutates them. :func:`fit_subject` is the thin
loop that loads the data, initialises, runs :func:`fit_step` and evaluates.

Conventions: OpenCV cameras; ``viewmats`` [V, 4, 4] world-to-camera; ``Ks`` [V, 3, 3] with pixel
centres at +0.5, so downscaling an image by ``s = new / old`` maps K to ``diag(s_x, s_y, 1) K``
exactly. Images are channels-last [V, H, W, 3] float in [0, 1]; label maps [V, H, W] int64 in the
canonical label set (``celebamask19``) with 255 = ignore.

Loss per step (B views):

- RGB: ``(1 - ssim_lambda) L1 + ssim_lambda (1 - SSIM)``. With masks the target is composited
  over the step's background colour (``img * m + bg * (1 - m)``) and the render uses the same
  background, so empty space must become transparent; optional ``alpha_weight * |alpha - m|``.
- Labels (``label_weight``): per-pixel NLL of the input label under the rendered distribution
  (``label_mode`` "logits" or "probs", see :mod:`facegs.losses3d`), weighted per pixel by
  - the parser's confidence map (``confidence_weighting``),
  - the view's manifest ``weight``,
  - the consensus inlier responsibility (``consensus_outliers``, after ``consensus_start``):
    EM with a per-view inlier prior ``pi_v``; E-step ``r = pi P_y / (pi P_y + (1 - pi) / K)`` from
    the detached rendered consensus ``P``; M-step ``pi_v <- EMA(mean r)``. A label that a
    confident consensus contradicts gets ``r`` near 0 and stops pulling the fit (FOCUS-style
    outlier down-weighting); agreeing labels keep ``r`` near 1.
  The sum of weighted NLLs is divided by the number of labelled pixels (down-weighting is not
  renormalised away).

``label_grad_to_geometry=False`` (Panoptic Lifting's stop-gradient): label gradients reach only
the logits, exactly, in the same single rasterize call. The rasterizer's gradient with respect to
the geometry weights each channel's upstream gradient by that channel's colour; so the label
channels are rendered twice, as ``c.detach()`` (the values; this output is detached, so it sends
no gradient back) and as ``c - c.detach()`` (identically 0: adds exactly nothing to the geometry
gradient, while its colour gradient ``weights^T dL/dout`` is the true gradient of ``c``); the
label image is the sum of the two outputs. Cost: 3 + 2K channels instead of 3 + K (the
per-pixel alpha and transmittance work, which dominates, is shared), versus a second full
rasterize of detached geometry for the two-call alternative.

Densification: gsplat's ``DefaultStrategy`` with its iteration numbers scaled to the short
schedule, the number of Gaussians capped (:class:`CappedDefaultStrategy`), and the opacity reset
called explicitly (gsplat 1.5.3's own reset never fires: ``step % reset_every == 0 & step > 0``
parses as a chained comparison that is always False).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import cv2
import numpy as np
import torch
from gsplat.strategy import DefaultStrategy
from gsplat.strategy.ops import reset_opa
from PIL import Image
from torch import Tensor

from facegs import losses3d as L
from facegs.errors import InputError
from facegs.imageio import read_confidence, read_labels, read_mask, read_rgb
from facegs.init_points import InitConfig, initial_points, load_points3d, params_from_points
from facegs.labels import CANONICAL, IGNORE_INDEX, get_label_set, remap
from facegs.manifest import SubjectManifest
from facegs.render import rasterize as _rasterize
from facegs.render import resolve_backend
from facegs.scene import Params, activated, num_gaussians, sh_colors

BACKGROUND_CLASS = 0  # "background" in celebamask19


# ----------------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------------


@dataclass
class FitConfig:
    """Hyper-parameters of one subject fit. Defaults: the CPU demo (600 steps, 24 views, 128 px).

    Iteration numbers left at ``None`` are derived from ``steps`` by :meth:`resolved` (the 3DGS
    schedule of 30k steps compressed to ``steps``).
    """

    steps: int = 600
    seed: int = 0
    views_per_step: int = 2
    downscale: float = 1.0  # images (and K) are resized by 1 / downscale
    tile_size: int | None = None  # rasterizer tile; None: 8 on the torch backend, 16 on gsplat
    # scene
    sh_degree: int = 3
    sh_degree_interval: int | None = None  # raise the active SH degree every this many steps
    init: InitConfig = field(default_factory=InitConfig)
    # learning rates (3DGS); means: lr * scene_scale, decaying exponentially to lr_means_final
    lr_means: float = 1.6e-4
    lr_means_final: float = 1.6e-6
    lr_scales: float = 5e-3
    lr_quats: float = 1e-3
    lr_opacities: float = 5e-2
    lr_sh0: float = 2.5e-3
    lr_shN: float = 2.5e-3 / 20
    lr_logits: float = 5e-2
    scale_lr_with_batch: bool = True  # lr * sqrt(views_per_step), as gsplat's trainer
    # losses
    ssim_lambda: float = 0.2
    label_weight: float = 0.5
    label_mode: str = "probs"  # probs | logits (probs measured better, see bench/fit_speed.py)
    label_bg_logit: float = 10.0  # background-class logit composited with T (logits mode)
    label_background: bool = True  # composite the background class with the transmittance
    # False: noisy labels must not drag the geometry (measured with base-parser labels, both rigs:
    # +8..+24 mIoU at |yaw| >= 75 and a 6 deg instead of 34 deg head frame; docs/benchmarks.md)
    label_grad_to_geometry: bool = False
    confidence_weighting: bool = True
    consensus_outliers: bool = False
    consensus_start: int | None = None  # warm-up before the E-step (default steps // 3)
    consensus_prior: float = 0.9  # initial per-view inlier prior pi_v
    consensus_momentum: float = 0.9
    alpha_weight: float = 0.05  # |alpha - mask| when masks exist
    background: str | tuple[float, float, float] = "auto"  # auto | random | black | white | (r,g,b)
    # densification (gsplat DefaultStrategy)
    densify: bool = True
    max_gaussians: int = 30_000
    refine_start: int | None = None
    refine_stop: int | None = None
    refine_every: int | None = None
    reset_every: int | None = None
    grow_grad2d: float = 2e-4
    grow_scale3d: float = 0.01
    prune_opa: float = 0.005
    prune_scale3d: float = 0.1
    # evaluation after the fit (one render of every view)
    eval_at_end: bool = True
    # bit-exact reproducibility on the CPU (torch.use_deterministic_algorithms during the fit)
    deterministic: bool = True

    def resolved(self) -> "FitConfig":
        """A copy with every ``None`` schedule entry filled in from ``steps``."""
        s = self.steps
        return dataclasses.replace(
            self,
            sh_degree_interval=self.sh_degree_interval or max(1, s // 6),
            consensus_start=s // 3 if self.consensus_start is None else self.consensus_start,
            refine_start=max(1, s // 12) if self.refine_start is None else self.refine_start,
            refine_stop=int(0.6 * s) if self.refine_stop is None else self.refine_stop,
            refine_every=max(1, s // 24) if self.refine_every is None else self.refine_every,
            reset_every=max(2, s // 3) if self.reset_every is None else self.reset_every,
        )


PRESETS: dict[str, dict[str, Any]] = {
    # unit tests: 32 px scenes, a few dozen steps
    "test": dict(steps=30, views_per_step=2, sh_degree=1, max_gaussians=3_000, eval_at_end=False,
                 init=InitConfig(num_points=600, grid_res=24)),
    # CPU demo (bench/fit_speed.py): 24 views at 128 px on 2 cores; one view per step, capped N
    "cpu_demo": dict(steps=600, views_per_step=1, sh_degree=1, max_gaussians=12_000,
                     init=InitConfig(num_points=6_000, grid_res=64)),
    # GPU (gsplat backend): a 7k-step 3DGS schedule with the original refinement cadence
    "gpu": dict(steps=7_000, views_per_step=1, sh_degree=3, max_gaussians=300_000, tile_size=16,
                init=InitConfig(num_points=50_000, grid_res=128), refine_start=500, refine_every=100,
                refine_stop=3_500, reset_every=3_000, sh_degree_interval=1_000),
}  # fmt: skip


def fit_config(preset: str = "cpu_demo", **overrides: Any) -> FitConfig:
    """A :class:`FitConfig` from a named preset (``test``, ``cpu_demo``, ``gpu``) plus overrides."""
    if preset not in PRESETS:
        raise KeyError(f"unknown fit preset '{preset}'; available: {sorted(PRESETS)}")
    return FitConfig(**{**PRESETS[preset], **overrides})


@dataclass
class FitResult:
    """``params``: fitted scene (detached CPU tensors); ``metrics``: one dict per step;
    ``summary``: totals, timings and the final evaluation."""

    params: dict[str, Tensor]
    metrics: list[dict[str, Any]]
    summary: dict[str, Any]


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------


@dataclass
class ViewData:
    """All views of a subject, resized to one size, as tensors on the fit device.

    images [V, H, W, 3] float; labels [V, H, W] int64 (canonical set, 255 = ignore) or None;
    confidence [V, H, W] float or None; masks [V, H, W] float in [0, 1] or None; gt_labels like
    labels or None; weights [V]; viewmats [V, 4, 4]; Ks [V, 3, 3] (already scaled to H x W).
    """

    view_ids: list[str]
    images: Tensor
    labels: Tensor | None
    confidence: Tensor | None
    masks: Tensor | None
    gt_labels: Tensor | None
    weights: Tensor
    viewmats: Tensor
    Ks: Tensor
    width: int
    height: int

    def __len__(self) -> int:
        return len(self.view_ids)


def _resize(arr: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    if (arr.shape[1], arr.shape[0]) == size:
        return arr
    return cv2.resize(arr, size, interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_AREA)


def _read_alpha(path) -> np.ndarray | None:
    """[H, W] float alpha of an RGBA/LA image file, else None."""
    with Image.open(path) as im:
        if im.mode not in ("RGBA", "LA"):
            return None
        return np.asarray(im.getchannel("A"), dtype=np.float32) / 255.0


def _to_canonical(labels: np.ndarray, label_set: str) -> np.ndarray:
    return labels if label_set == CANONICAL else remap(labels, label_set, CANONICAL)


def load_view_data(manifest: SubjectManifest, views: Sequence[str] | None = None, downscale: float = 1.0,
                   device: str | torch.device = "cpu") -> ViewData:
    """Read the images, labels, confidences, masks (or alpha) of the chosen views.

    Every view is resized to ``round(W0 / downscale) x round(H0 / downscale)`` of the FIRST view
    (area filter; nearest for label maps) and its K scaled by ``diag(s_x, s_y, 1)``. Label maps are
    mapped to the canonical set. Views lacking labels (while others have them) get all-ignore maps.
    """
    vs = list(manifest.views) if views is None else [manifest.view(v) for v in views]
    if not vs:
        raise InputError("no views to fit", subject=manifest.subject_id)
    W, H = max(1, round(vs[0].width / downscale)), max(1, round(vs[0].height / downscale))
    cols: dict[str, list] = {k: [] for k in ("img", "lab", "conf", "mask", "gt", "K", "w2c", "w")}
    for v in vs:
        try:
            _load_one(manifest, v, (W, H), cols)
        except InputError as e:
            raise e.with_context(subject=manifest.subject_id, view=v.view_id) from None

    def stack(key, dtype, fill=None):
        items = cols[key]
        if all(x is None for x in items):
            return None
        items = [fill if x is None else x for x in items]
        return torch.from_numpy(np.stack(items)).to(device=device, dtype=dtype)

    ign = np.full((H, W), IGNORE_INDEX, np.uint8)
    return ViewData(
        view_ids=[v.view_id for v in vs],
        images=stack("img", torch.float32),
        labels=stack("lab", torch.int64, ign),
        confidence=stack("conf", torch.float32, np.ones((H, W), np.float32)),
        masks=stack("mask", torch.float32, np.ones((H, W), np.float32)),
        gt_labels=stack("gt", torch.int64, ign),
        weights=torch.tensor(cols["w"], dtype=torch.float32, device=device),
        viewmats=stack("w2c", torch.float32),
        Ks=stack("K", torch.float32),
        width=W,
        height=H,
    )


def _load_one(manifest: SubjectManifest, v, size: tuple[int, int], cols: dict[str, list]) -> None:
    W, H = size
    if v.distortion is not None and np.any(np.abs(v.distortion) > 1e-9):
        warnings.warn(f"view '{v.view_id}' has lens distortion: the fit assumes undistorted images", stacklevel=3)
    img = read_rgb(manifest.path(v.image))
    h0, w0 = img.shape[:2]
    cols["img"].append(_resize(img, size).astype(np.float32) / 255.0)
    lab = None if v.labels is None else _to_canonical(read_labels(manifest.path(v.labels)), manifest.label_set)
    cols["lab"].append(None if lab is None else _resize(lab, size, nearest=True))
    conf = None if v.confidence is None else read_confidence(manifest.path(v.confidence))
    cols["conf"].append(None if conf is None else _resize(conf, size))
    if v.mask is not None:
        m = read_mask(manifest.path(v.mask)).astype(np.float32)
    else:
        m = _read_alpha(manifest.path(v.image))
    cols["mask"].append(None if m is None else _resize(m, size))
    gt = None if v.gt_labels is None else _to_canonical(read_labels(manifest.path(v.gt_labels)), manifest.label_set)
    cols["gt"].append(None if gt is None else _resize(gt, size, nearest=True))
    K = np.asarray(v.K, dtype=np.float64).copy()
    K[0] *= W / w0
    K[1] *= H / h0
    cols["K"].append(K)
    cols["w2c"].append(np.asarray(v.world_to_camera, dtype=np.float64))
    cols["w"].append(float(v.weight))


def scene_scale(viewmats: Tensor) -> float:
    """gsplat/3DGS scene extent: 1.1 x the largest distance of a camera centre from their mean."""
    R, t = viewmats[:, :3, :3], viewmats[:, :3, 3]
    centers = -torch.einsum("cji,cj->ci", R, t)
    return 1.1 * float((centers - centers.mean(0)).norm(dim=-1).max().clamp_min(1e-6))


# ----------------------------------------------------------------------------------------------
# initialisation, optimizers, strategy
# ----------------------------------------------------------------------------------------------


def init_scene(manifest: SubjectManifest | None, data: ViewData, cfg: FitConfig,
               device: str | torch.device = "cpu") -> tuple[Params, str]:
    """Initial Gaussians from ``points3d``, a visual hull of the masks / labels, or uniformly."""
    fg = None
    if data.masks is not None:
        fg = data.masks.cpu().numpy() >= 0.5
    elif data.labels is not None:
        lab = data.labels.cpu().numpy()
        fg = (lab != BACKGROUND_CLASS) & (lab != IGNORE_INDEX)
    pts = load_points3d(manifest) if manifest is not None and manifest.points3d else None
    xyz, rgb, src = initial_points(
        data.images.cpu().numpy(), data.Ks.cpu().double().numpy(), data.viewmats.cpu().double().numpy(),
        dataclasses.replace(cfg.init, seed=cfg.seed), fg=fg, points=pts,
    )
    n_cls = get_label_set(CANONICAL).num_classes
    return params_from_points(xyz, rgb, cfg.init, num_classes=n_cls, sh_degree=cfg.sh_degree, device=device), src


def make_optimizers(params: Params, cfg: FitConfig, scene_scale: float) -> dict[str, torch.optim.Adam]:
    """One Adam per parameter (gsplat's convention), 3DGS learning rates, eps 1e-15."""
    b = cfg.views_per_step if cfg.scale_lr_with_batch else 1
    lrs = {
        "means": cfg.lr_means * scene_scale, "scales": cfg.lr_scales, "quats": cfg.lr_quats,
        "opacities": cfg.lr_opacities, "sh0": cfg.lr_sh0, "shN": cfg.lr_shN, "logits": cfg.lr_logits,
    }  # fmt: skip
    betas = (1 - b * (1 - 0.9), 1 - b * (1 - 0.999))
    return {
        k: torch.optim.Adam([{"params": [params[k]], "lr": lr * math.sqrt(b), "name": k}],
                            eps=1e-15 / math.sqrt(b), betas=betas)
        for k, lr in lrs.items()
    }


def means_lr_decay(cfg: FitConfig) -> float:
    """Per-step factor taking the means' lr from ``lr_means`` to ``lr_means_final`` over ``steps``."""
    return (cfg.lr_means_final / cfg.lr_means) ** (1.0 / max(1, cfg.steps))


@dataclass
class CappedDefaultStrategy(DefaultStrategy):
    """``DefaultStrategy`` that never grows beyond ``max_gaussians``.

    When more Gaussians qualify for growth than the budget allows, only those with the largest
    accumulated image-plane gradient grow (the others' accumulators are zeroed before the parent's
    ``_grow_gs``; all accumulators are zeroed after every refinement anyway).
    """

    max_gaussians: int = 30_000

    @torch.no_grad()
    def _grow_gs(self, params, optimizers, state, step):
        budget = self.max_gaussians - num_gaussians(params)
        grads = state["grad2d"] / state["count"].clamp_min(1)
        cand = grads > self.grow_grad2d
        if int(cand.sum()) > max(budget, 0):
            keep = torch.zeros_like(cand)
            if budget > 0:
                keep[torch.topk(torch.where(cand, grads, torch.zeros_like(grads)), budget).indices] = True
            state["grad2d"][~keep] = 0.0
        return super()._grow_gs(params, optimizers, state, step)


def make_strategy(cfg: FitConfig) -> CappedDefaultStrategy:
    """Densification policy for a resolved config. gsplat 1.5.3's own opacity reset never fires;
    :func:`maybe_reset_opacity` does it (a clamp, so harmless if a later gsplat resets as well)."""
    return CappedDefaultStrategy(
        prune_opa=cfg.prune_opa, grow_grad2d=cfg.grow_grad2d, grow_scale3d=cfg.grow_scale3d,
        prune_scale3d=cfg.prune_scale3d, refine_start_iter=cfg.refine_start, refine_stop_iter=cfg.refine_stop,
        refine_every=cfg.refine_every, reset_every=cfg.reset_every, max_gaussians=cfg.max_gaussians,
    )  # fmt: skip


def maybe_reset_opacity(params: Params, optimizers: dict, strategy_state: dict, step: int, cfg: FitConfig) -> bool:
    """3DGS opacity reset: at ``step % reset_every == 0`` (0 < step < refine_stop) clamp every
    opacity to ``2 * prune_opa`` and zero its Adam moments. Returns whether it fired."""
    if not (cfg.densify and 0 < step < cfg.refine_stop and step % cfg.reset_every == 0):
        return False
    reset_opa(params=params, optimizers=optimizers, state=strategy_state, value=cfg.prune_opa * 2.0)
    return True


# ----------------------------------------------------------------------------------------------
# rendering
# ----------------------------------------------------------------------------------------------


def step_backgrounds(n: int, cfg: FitConfig, has_masks: bool, generator: torch.Generator | None,
                     device: torch.device | str) -> Tensor:
    """[n, 3] RGB background per rendered view (random per view when ``"random"``/auto+masks)."""
    bg = cfg.background
    if bg == "auto":
        bg = "random" if has_masks else "black"
    if bg == "random":
        if not has_masks:
            raise ValueError("background='random' needs masks (or alpha) to composite the targets")
        return torch.rand(n, 3, generator=generator).to(device)
    named = {"black": (0.0, 0.0, 0.0), "white": (1.0, 1.0, 1.0)}
    rgb = named[bg] if isinstance(bg, str) else tuple(bg)
    return torch.tensor(rgb, dtype=torch.float32, device=device).expand(n, 3).clone()


def render(params: Params, viewmats: Tensor, Ks: Tensor, width: int, height: int, bg_rgb: Tensor, *,
           sh_degree: int | None = None, label_mode: str = "probs", label_background: bool = True,
           label_bg_logit: float = 10.0, label_grad_to_geometry: bool = True, with_labels: bool = True,
           backend: str = "auto", tile_size: int | None = None) -> tuple[Tensor, Tensor | None, Tensor, dict]:
    """Render RGB and label channels of B views in one differentiable rasterize call.

    Args: ``viewmats`` [B, 4, 4], ``Ks`` [B, 3, 3], ``bg_rgb`` [B, 3].
    Returns ``rgb`` [B, H, W, 3], ``labels`` [B, H, W, K] (blended logits or probabilities, see
    :func:`facegs.losses3d.label_probs`; None without labels), ``alpha`` [B, H, W, 1] and the
    rasterizer's ``meta`` (for the densification strategy). With ``label_grad_to_geometry=False``
    the label channels carry gradient to the logits only, in the same call (module docstring).
    """
    means, quats, scales, opac = activated(params)
    B = viewmats.shape[0]
    backend = resolve_backend(backend, means)
    ts = tile_size or (16 if backend == "gsplat" else 8)
    rasterize = functools.partial(_rasterize, width=width, height=height, backend=backend, tile_size=ts)
    rgb_c = sh_colors(params, viewmats, sh_degree)  # [B, N, 3]
    if not with_labels:
        out, alpha, meta = rasterize(means, quats, scales, opac, rgb_c, viewmats, Ks, backgrounds=bg_rgb)
        return out, None, alpha, meta
    lab_c = L.label_colors(params["logits"], label_mode)  # [N, K]
    K = lab_c.shape[-1]
    bg_lab = L.label_background(K, label_mode, BACKGROUND_CLASS if label_background else None,
                                label_bg_logit, device=bg_rgb.device).expand(B, K)
    if label_grad_to_geometry:
        cols = torch.cat([rgb_c, lab_c[None].expand(B, -1, -1)], dim=-1)
        out, alpha, meta = rasterize(means, quats, scales, opac, cols, viewmats, Ks,
                                     backgrounds=torch.cat([bg_rgb, bg_lab], -1))
        return out[..., :3], out[..., 3:], alpha, meta
    # one call, two label channel groups: values (detached colours, output detached) and
    # gradient carriers (colours identically 0, so they add exactly nothing to the geometry gradient)
    values = lab_c.detach()[None].expand(B, -1, -1)
    carriers = (lab_c - lab_c.detach())[None].expand(B, -1, -1)
    cols = torch.cat([rgb_c, values, carriers], dim=-1)
    bgs = torch.cat([bg_rgb, bg_lab, torch.zeros_like(bg_lab)], -1)
    out, alpha, meta = rasterize(means, quats, scales, opac, cols, viewmats, Ks, backgrounds=bgs)
    return out[..., :3], out[..., 3 : 3 + K].detach() + out[..., 3 + K :], alpha, meta


# ----------------------------------------------------------------------------------------------
# one optimisation step
# ----------------------------------------------------------------------------------------------


@dataclass
class FitState:
    """Mutable state of a fit besides params/optimizers/strategy: step counter, data sampler,
    per-view EM inlier priors [V]."""

    step: int
    generator: torch.Generator
    order: list[int]
    inlier_prior: Tensor
    scene_scale: float


def new_fit_state(n_views: int, cfg: FitConfig, scene_scale_: float) -> FitState:
    g = torch.Generator().manual_seed(cfg.seed)
    return FitState(step=0, generator=g, order=[], inlier_prior=torch.full((n_views,), cfg.consensus_prior),
                    scene_scale=scene_scale_)


def next_views(fs: FitState, n_views: int, k: int) -> list[int]:
    """Next ``k`` view indices from a reshuffled-per-epoch permutation (deterministic)."""
    out: list[int] = []
    while len(out) < min(k, n_views):
        if not fs.order:
            fs.order = torch.randperm(n_views, generator=fs.generator).tolist()
        out.append(fs.order.pop())
    return out


def label_pixel_weights(data: ViewData, idx: Tensor, labels: Tensor, probs: Tensor, cfg: FitConfig,
                        fs: FitState) -> tuple[Tensor, Tensor | None]:
    """Per-pixel label-loss weights [B, H, W] (confidence x view weight x consensus inlier
    responsibility) and the responsibilities (None before the consensus warm-up)."""
    valid = labels != IGNORE_INDEX
    w = valid.float() * data.weights[idx].view(-1, 1, 1)
    if cfg.confidence_weighting and data.confidence is not None:
        w = w * data.confidence[idx]
    r = None
    if cfg.consensus_outliers and fs.step >= cfg.consensus_start:
        pi = fs.inlier_prior[idx.cpu()].to(probs.device)
        r = L.consensus_inlier_weight(probs, labels, pi)
        fs.inlier_prior[idx.cpu()] = L.update_inlier_prior(pi, r, valid, cfg.consensus_momentum).cpu()
        w = w * r
    return w, r


def compute_loss(rgb: Tensor, lab: Tensor | None, alpha: Tensor, data: ViewData, idx: Tensor, bg: Tensor,
                 cfg: FitConfig, fs: FitState) -> tuple[Tensor, dict[str, float]]:
    """Total loss and its parts for a rendered batch of views ``idx`` [B] (see module docstring)."""
    target = data.images[idx]
    m = None if data.masks is None else data.masks[idx][..., None]
    if m is not None:
        target = target * m + bg[:, None, None, :] * (1 - m)
    loss, parts = L.rgb_loss(rgb, target, cfg.ssim_lambda)
    parts = {"rgb": float(loss.detach()), **parts, "psnr": L.psnr(rgb, target)}
    if m is not None and cfg.alpha_weight > 0:
        la = (alpha - m).abs().mean()
        loss = loss + cfg.alpha_weight * la
        parts["alpha"] = float(la.detach())
    if lab is not None and data.labels is not None and cfg.label_weight > 0:
        labels = data.labels[idx]
        bgc = BACKGROUND_CLASS if cfg.label_background else None
        nll = L.label_nll(lab, alpha, labels, cfg.label_mode, bgc)
        probs = L.label_probs(lab.detach(), alpha.detach(), cfg.label_mode, bgc)
        w, r = label_pixel_weights(data, idx, labels, probs, cfg, fs)
        ll = L.weighted_mean(nll, w, labels != IGNORE_INDEX)
        loss = loss + cfg.label_weight * ll
        parts.update(label=float(ll.detach()), label_acc=L.label_accuracy(lab, labels))
        if r is not None:
            parts["inlier_frac"] = float((r > 0.5).float().sum() / (labels != IGNORE_INDEX).sum().clamp_min(1))
    parts["loss"] = float(loss.detach())
    return loss, parts


def fit_step(params: Params, optimizers: dict, strategy: CappedDefaultStrategy | None, strategy_state: dict,
             data: ViewData, cfg: FitConfig, fs: FitState, backend: str = "auto") -> dict[str, Any]:
    """One optimisation step on ``cfg.views_per_step`` views; mutates all state. Returns metrics."""
    step = fs.step
    dev = data.images.device
    idx = torch.tensor(next_views(fs, len(data), cfg.views_per_step), device=dev)
    bg = step_backgrounds(len(idx), cfg, data.masks is not None, fs.generator, dev)
    deg = min(cfg.sh_degree, step // cfg.sh_degree_interval)
    rgb, lab, alpha, meta = render(
        params, data.viewmats[idx], data.Ks[idx], data.width, data.height, bg, sh_degree=deg,
        label_mode=cfg.label_mode, label_background=cfg.label_background, label_bg_logit=cfg.label_bg_logit,
        label_grad_to_geometry=cfg.label_grad_to_geometry,
        with_labels=data.labels is not None and cfg.label_weight > 0, backend=backend, tile_size=cfg.tile_size,
    )  # fmt: skip
    if strategy is not None:
        strategy.step_pre_backward(params, optimizers, strategy_state, step, meta)
    loss, parts = compute_loss(rgb, lab, alpha, data, idx, bg, cfg, fs)
    loss.backward()
    for opt in optimizers.values():
        opt.step()
        opt.zero_grad(set_to_none=True)
    for g in optimizers["means"].param_groups:
        g["lr"] *= means_lr_decay(cfg)
    events = []
    if strategy is not None:
        n0 = num_gaussians(params)
        strategy.step_post_backward(params, optimizers, strategy_state, step, meta, packed=False)
        if num_gaussians(params) != n0:
            events.append("refine")
        if maybe_reset_opacity(params, optimizers, strategy_state, step, cfg):
            events.append("reset_opacity")
    fs.step += 1
    return {"step": step, **parts, "n_gaussians": num_gaussians(params), "sh_degree": deg,
            "views": idx.tolist(), "events": events}


# ----------------------------------------------------------------------------------------------
# evaluation and the subject-level loop
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(params: Params, data: ViewData, cfg: FitConfig, backend: str = "auto", batch: int = 4) -> dict[str, float]:
    """Render every view once (black background) and compare with the inputs and ground truth.

    Returns ``psnr`` (vs the masked images), ``label_acc_input`` (rendered argmax vs the input
    labels), and when ``gt_labels`` exist ``label_acc_gt`` (rendered vs GT), ``input_acc_gt``
    (input labels vs GT: what the parser alone achieved), ``miou_gt`` and ``input_miou_gt``.
    """
    has_lab = data.labels is not None
    mse, n_pix = 0.0, 0
    hits = {"in": [0, 0], "gt": [0, 0], "in_gt": [0, 0]}
    K = get_label_set(CANONICAL).num_classes
    iou = {"fused": (torch.zeros(K), torch.zeros(K)), "input": (torch.zeros(K), torch.zeros(K))}
    for s in range(0, len(data), batch):
        idx = torch.arange(s, min(s + batch, len(data)), device=data.images.device)
        bg = torch.zeros(len(idx), 3, device=data.images.device)
        rgb, lab, alpha, _ = render(params, data.viewmats[idx], data.Ks[idx], data.width, data.height, bg,
                                    label_mode=cfg.label_mode, label_background=cfg.label_background,
                                    label_bg_logit=cfg.label_bg_logit, with_labels=has_lab, backend=backend,
                                    tile_size=cfg.tile_size)
        tgt = data.images[idx] * (1.0 if data.masks is None else data.masks[idx][..., None])
        mse += float(((rgb.clamp(0, 1) - tgt) ** 2).sum())
        n_pix += tgt.numel()
        if not has_lab:
            continue
        pred = lab.argmax(-1)
        _count(hits["in"], pred, data.labels[idx])
        if data.gt_labels is not None:
            gt = data.gt_labels[idx]
            _count(hits["gt"], pred, gt)
            _count(hits["in_gt"], data.labels[idx], gt)
            _iou_counts(iou["fused"], pred, gt, K)
            _iou_counts(iou["input"], data.labels[idx], gt, K)
    out = {"psnr": 10 * math.log10(1.0 / max(mse / max(n_pix, 1), 1e-12))}
    if has_lab:
        out["label_acc_input"] = hits["in"][0] / max(hits["in"][1], 1)
    if has_lab and data.gt_labels is not None:
        out["label_acc_gt"] = hits["gt"][0] / max(hits["gt"][1], 1)
        out["input_acc_gt"] = hits["in_gt"][0] / max(hits["in_gt"][1], 1)
        out["miou_gt"] = _miou(*iou["fused"])
        out["input_miou_gt"] = _miou(*iou["input"])
    return out


def _iou_counts(acc: tuple[Tensor, Tensor], pred: Tensor, gt: Tensor, K: int) -> None:
    """Accumulate per-class intersection and union (pixels where ``gt`` is not ignored)."""
    ok = gt != IGNORE_INDEX
    p = torch.where(ok, pred, K).reshape(-1).clamp(max=K).cpu()
    g = torch.where(ok, gt, K).reshape(-1).cpu()
    inter = torch.bincount(g[p == g], minlength=K + 1)[:K]
    area_p = torch.bincount(p, minlength=K + 1)[:K]
    area_g = torch.bincount(g, minlength=K + 1)[:K]
    acc[0].add_(inter.float())
    acc[1].add_((area_p + area_g - inter).float())


def _miou(inter: Tensor, union: Tensor) -> float:
    """Mean IoU over the classes present in the prediction or the ground truth."""
    present = union > 0
    return float((inter[present] / union[present]).mean()) if present.any() else float("nan")


def _count(acc: list[int], pred: Tensor, target: Tensor) -> None:
    ok = target != IGNORE_INDEX
    acc[0] += int(((pred == target) & ok).sum())
    acc[1] += int(ok.sum())


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool = True):
    """``torch.use_deterministic_algorithms(True)`` for the duration of the fit (restored on exit).

    Needed for "same inputs -> identical parameters" on the CPU: with more than one thread the
    backward of tensor indexing (``index_put_(accumulate=True)``, used by the rasterizer's gathers)
    adds in a varying order, so gradients differ in the last bit in about one run out of three;
    deterministic mode switches it to a sorted, ordered accumulation.
    """
    prev, prev_warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    if enabled:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev, warn_only=prev_warn)


def fit_subject(manifest: SubjectManifest, cfg: FitConfig | None = None, device: str | torch.device = "cpu",
                backend: str = "auto", progress: bool = True, views: Sequence[str] | None = None) -> FitResult:
    """Fit one subject: load views, initialise, optimise ``cfg.steps`` steps, evaluate.

    Seeds ``torch.manual_seed(cfg.seed)`` (global; densification splits draw from it) so that the
    same inputs give identical parameters on the CPU. ``views``: view ids to fit (default all).
    """
    data = load_view_data(manifest, views, (cfg or FitConfig()).downscale, device)
    return fit_views(data, cfg, manifest=manifest, device=device, backend=backend, progress=progress)


def fit_views(data: ViewData, cfg: FitConfig | None = None, *, manifest: SubjectManifest | None = None,
              params: Params | None = None, device: str | torch.device = "cpu", backend: str = "auto",
              progress: bool = True) -> FitResult:
    """:func:`fit_subject` on already loaded :class:`ViewData` (optionally from given ``params``)."""
    cfg = (cfg or FitConfig()).resolved()
    if cfg.label_mode not in L.LABEL_MODES:
        raise ValueError(f"label_mode must be one of {L.LABEL_MODES}, got '{cfg.label_mode}'")
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    src = "given"
    if params is None:
        params, src = init_scene(manifest, data, cfg, device)
    t_init = time.perf_counter() - t0
    sc = scene_scale(data.viewmats)
    optimizers = make_optimizers(params, cfg, sc)
    strategy = make_strategy(cfg) if cfg.densify else None
    sstate = strategy.initialize_state(scene_scale=sc) if strategy is not None else {}
    if strategy is not None:
        strategy.check_sanity(params, optimizers)
    fs = new_fit_state(len(data), cfg, sc)
    with deterministic_algorithms(cfg.deterministic):
        metrics = _run_steps(params, optimizers, strategy, sstate, data, cfg, fs, backend, progress)
    t_fit = time.perf_counter() - t0 - t_init
    summary = {"n_views": len(data), "width": data.width, "height": data.height, "init_source": src,
               "scene_scale": sc, "steps": cfg.steps, "n_gaussians": num_gaussians(params),
               "init_s": t_init, "fit_s": t_fit, "s_per_step": t_fit / max(cfg.steps, 1),
               "n_resets": sum("reset_opacity" in m["events"] for m in metrics),
               "n_refines": sum("refine" in m["events"] for m in metrics)}  # fmt: skip
    if cfg.eval_at_end:
        t1 = time.perf_counter()
        summary["eval"] = evaluate(params, data, cfg, backend)
        summary["eval_s"] = time.perf_counter() - t1
    final = {k: v.detach().cpu().clone() for k, v in params.items()}
    return FitResult(params=final, metrics=metrics, summary=summary)


def _run_steps(params, optimizers, strategy, sstate, data, cfg, fs, backend, progress) -> list[dict]:
    from tqdm.auto import tqdm

    metrics = []
    bar = tqdm(range(cfg.steps), desc="fit", disable=not progress, leave=False)
    for _ in bar:
        t = time.perf_counter()
        m = fit_step(params, optimizers, strategy, sstate, data, cfg, fs, backend)
        m["time_s"] = time.perf_counter() - t
        metrics.append(m)
        if progress and (fs.step % 10 == 0 or fs.step == cfg.steps):
            bar.set_postfix(loss=f"{m['loss']:.4f}", psnr=f"{m['psnr']:.1f}", n=m["n_gaussians"])
    bar.close()
    return metrics


__all__ = [
    "PRESETS", "fit_config", "deterministic_algorithms", "FitConfig", "FitResult", "ViewData", "FitState", "CappedDefaultStrategy", "load_view_data", "scene_scale",
    "init_scene", "make_optimizers", "make_strategy", "maybe_reset_opacity", "means_lr_decay", "step_backgrounds",
    "render", "new_fit_state", "next_views", "label_pixel_weights", "compute_loss", "fit_step", "evaluate",
    "fit_subject", "fit_views",
]
