"""Fit one Gaussian scene per subject to its RGB images and its noisy face-parsing label maps.

One geometry (means, scales, quats, opacities) is shared by colour (SH) and class logits, so the
label maps of all views must agree in 3D: the rendered labels are a multi-view consensus that
denoises the per-view parser output (the method of Gahlawat, Mukherjee and Jayagopi, VCIP 2025,
arXiv 2510.08096; docs/architecture.md).

Functional core, gsplat style: the caller owns ``params`` (dict of ``nn.Parameter``, see
:mod:`facegs.splat.scene`), ``optimizers`` (one Adam per parameter, one param group each) and the
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
  (``label_mode`` "logits" or "probs", see :mod:`facegs.fit.losses`), weighted per pixel by
  - the parser's confidence map (``confidence_weighting``),
  - the view's manifest ``weight``,
  - ``1 - mask`` for a 'background' label (``matte_over_background``, views with a mask or alpha):
    the matte, not the parser, says where the head is (a parser eats the silhouette in profile),
  - the consensus inlier responsibility (``consensus_outliers``, after ``consensus_start``):
    EM with a per-view inlier prior ``pi_v``; E-step ``r = pi P_y / (pi P_y + (1 - pi) / K)`` from
    the detached rendered consensus ``P``; M-step ``pi_v <- EMA(mean r)``. A label that a
    confident consensus contradicts gets ``r`` near 0 and stops pulling the fit (FOCUS-style
    outlier down-weighting); agreeing labels keep ``r`` near 1.
  The sum of weighted NLLs is divided by the number of labelled pixels (down-weighting is not
  renormalised away).

``label_grad_to_geometry=False`` (Panoptic Lifting's stop-gradient): label gradients reach only
the logits, exactly, in the same single rasterize call (``geometry_grad_channels=3`` of
:func:`facegs.splat.rasterize.rasterize`). The fused CPU kernel does it natively (only the RGB
channels enter the geometry gradient; 3 + K channels). On the other backends the rasterizer's
gradient with respect to the geometry weights each channel's upstream gradient by that channel's
colour; so the label channels are rendered twice, as ``c.detach()`` (the values; this output is
detached, so it sends no gradient back) and as ``c - c.detach()`` (identically 0: adds exactly
nothing to the geometry gradient, while its colour gradient ``weights^T dL/dout`` is the true
gradient of ``c``); the label image is the sum of the two outputs. Cost there: 3 + 2K channels
instead of 3 + K (the per-pixel alpha and transmittance work, which dominates, is shared), versus
a second full rasterize of detached geometry for the two-call alternative.

Densification: gsplat's ``DefaultStrategy`` with its iteration numbers scaled to the short
schedule, the number of Gaussians capped (:class:`CappedDefaultStrategy`), and the opacity reset
called explicitly (gsplat 1.5.3's own reset never fires: ``step % reset_every == 0 & step > 0``
parses as a chained comparison that is always False).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from facegs.core.labels import IGNORE_INDEX
from facegs.core.manifest import SubjectManifest
from facegs.fit.config import FitConfig
from facegs.fit.data import ViewData, load_view_data, scene_scale
from facegs.fit.densify import CappedDefaultStrategy, make_strategy, maybe_reset_opacity
from facegs.fit.evaluate import evaluate
from facegs.fit.init import init_scene
from facegs.fit.inpaint import inpaint_labels, label_support, support_half
from facegs.fit.losses import (
    class_balance_weights,
    consensus_inlier_weight,
    label_accuracy,
    label_nll,
    psnr,
    rgb_loss,
    update_inlier_prior,
    weighted_mean,
)
from facegs.fit.lr_views import find_swapped_views, flip_views
from facegs.label.views import ViewLabels
from facegs.splat.rgb_labels import (
    BACKGROUND_CLASS,
    LABEL_MODES,
    label_probs,
    render_rgb_labels,
)
from facegs.splat.scene import Params, num_gaussians


@dataclass
class FitResult:
    """``params``: fitted scene (detached CPU tensors); ``metrics``: one dict per step;
    ``summary``: totals, timings and the final evaluation."""

    params: dict[str, Tensor]
    metrics: list[dict[str, Any]]
    summary: dict[str, Any]


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


@dataclass
class FitState:
    """Mutable state of a fit besides params/optimizers/strategy: step counter, data sampler,
    per-view EM inlier priors [V]."""

    step: int
    generator: torch.Generator
    order: list[int]
    inlier_prior: Tensor
    scene_scale: float
    class_weights: Tensor | None = None  # [256] label-loss weight per class value (class_balance_weights)


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
    """Per-pixel label-loss weights [B, H, W] (confidence x view weight x class balance x
    ``1 - mask`` for background labels (``matte_over_background``) x consensus inlier
    responsibility) and the responsibilities (None before the consensus warm-up)."""
    valid = labels != IGNORE_INDEX
    w = valid.float() * data.weights[idx].view(-1, 1, 1)
    if cfg.confidence_weighting and data.confidence is not None:
        w = w * data.confidence[idx]
    if fs.class_weights is not None:
        w = w * fs.class_weights[labels]
    if cfg.matte_over_background and cfg.label_background and data.masks is not None:
        m = data.masks[idx]
        if data.has_mask is not None:
            m = m * data.has_mask[idx].view(-1, 1, 1).to(m.dtype)
        w = torch.where(labels == BACKGROUND_CLASS, w * (1.0 - m), w)
    r = None
    if cfg.consensus_outliers and fs.step >= cfg.consensus_start:
        pi = fs.inlier_prior[idx.cpu()].to(probs.device)
        r = consensus_inlier_weight(probs, labels, pi)
        fs.inlier_prior[idx.cpu()] = update_inlier_prior(pi, r, valid, cfg.consensus_momentum).cpu()
        w = w * r
    return w, r


def compute_loss(rgb: Tensor, lab: Tensor | None, alpha: Tensor, data: ViewData, idx: Tensor, bg: Tensor,
                 cfg: FitConfig, fs: FitState) -> tuple[Tensor, dict[str, float]]:
    """Total loss and its parts for a rendered batch of views ``idx`` [B] (see module docstring)."""
    target = data.images[idx]
    m = None if data.masks is None else data.masks[idx][..., None]
    if m is not None:
        target = target * m + bg[:, None, None, :] * (1 - m)
    loss, parts = rgb_loss(rgb, target, cfg.ssim_lambda)
    parts = {"rgb": float(loss.detach()), **parts, "psnr": psnr(rgb, target)}
    if m is not None and cfg.alpha_weight > 0:
        la = (alpha - m).abs().mean()
        loss = loss + cfg.alpha_weight * la
        parts["alpha"] = float(la.detach())
    if lab is not None and data.labels is not None and cfg.label_weight > 0:
        labels = data.labels[idx]
        bgc = BACKGROUND_CLASS if cfg.label_background else None
        nll = label_nll(lab, alpha, labels, cfg.label_mode, bgc)
        probs = label_probs(lab.detach(), alpha.detach(), cfg.label_mode, bgc)
        w, r = label_pixel_weights(data, idx, labels, probs, cfg, fs)
        ll = weighted_mean(nll, w, labels != IGNORE_INDEX)
        loss = loss + cfg.label_weight * ll
        parts.update(label=float(ll.detach()), label_acc=label_accuracy(lab, labels))
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
    rgb, lab, alpha, meta = render_rgb_labels(
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


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool = True):
    """``torch.use_deterministic_algorithms(True)`` for the duration of the fit (restored on exit).

    Needed for "same inputs -> identical parameters" on the CPU: with more than one thread the
    backward of tensor indexing (``index_put_(accumulate=True)``, used by the rasterizer's gathers)
    adds in a varying order, so gradients differ in the last bit in about one run out of three;
    deterministic mode switches it to a sorted, ordered accumulation.

    Deterministic mode also fills every new tensor from ``torch.empty`` with NaN
    (``torch.utils.deterministic.fill_uninitialized_memory``), a debugging aid for ops that read
    memory they did not write; here it was ~400 ``fill_`` calls and ~10% of a CPU fit step, so it is
    switched off for the fit (every op used writes all of its output).
    """
    prev, prev_warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    prev_fill = torch.utils.deterministic.fill_uninitialized_memory
    if enabled:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev, warn_only=prev_warn)
        torch.utils.deterministic.fill_uninitialized_memory = prev_fill


def fit_subject(manifest: SubjectManifest, cfg: FitConfig | None = None, device: str | torch.device = "cpu",
                backend: str = "auto", progress: bool = True, views: Sequence[str] | None = None,
                labels: Mapping[str, ViewLabels] | None = None) -> FitResult:
    """Fit one subject: load views, initialise, optimise ``cfg.steps`` steps, evaluate.

    Seeds ``torch.manual_seed(cfg.seed)`` (global; densification splits draw from it) so that the
    same inputs give identical parameters on the CPU. ``views``: view ids to fit (default all).
    ``labels``: in-memory initial labels (:func:`facegs.label.views.initial_labels`); default: the
    manifest's label files.
    """
    data = load_view_data(manifest, views, (cfg or FitConfig()).downscale, device, labels=labels)
    return fit_views(data, cfg, manifest=manifest, device=device, backend=backend, progress=progress)


def fit_views(data: ViewData, cfg: FitConfig | None = None, *, manifest: SubjectManifest | None = None,
              params: Params | None = None, device: str | torch.device = "cpu", backend: str = "auto",
              progress: bool = True) -> FitResult:
    """:func:`fit_subject` on already loaded :class:`ViewData` (optionally from given ``params``)."""
    cfg = (cfg or FitConfig()).resolved()
    if cfg.label_mode not in LABEL_MODES:
        raise ValueError(f"label_mode must be one of {LABEL_MODES}, got '{cfg.label_mode}'")
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
    if data.labels is not None and cfg.label_class_balance > 0:
        fs.class_weights = class_balance_weights(data.labels, params["logits"].shape[-1], cfg.label_class_balance,
                                                 cfg.label_class_weight_max)
    with deterministic_algorithms(cfg.deterministic):
        metrics = _run_steps(params, optimizers, strategy, sstate, data, cfg, fs, backend, progress)
    t_fit = time.perf_counter() - t0 - t_init
    inpaint: dict[str, float | int] | None = None
    if data.labels is not None and cfg.label_inpaint_px > 0:
        t2 = time.perf_counter()
        sup = label_support(params, data, backend)
        s_half = support_half(sup.disagreement, cfg.label_inpaint_px)
        params, changed = inpaint_labels(params, sup.support, s_half)
        inpaint = {"disagreement": round(sup.disagreement, 6), "support_half_px": round(s_half, 4),
                   "relabelled": changed, "seconds": time.perf_counter() - t2}
    summary = {"n_views": len(data), "width": data.width, "height": data.height, "init_source": src,
               "scene_scale": sc, "steps": cfg.steps, "n_gaussians": num_gaussians(params),
               "init_s": t_init, "fit_s": t_fit, "s_per_step": t_fit / max(cfg.steps, 1),
               "n_resets": sum("reset_opacity" in m["events"] for m in metrics),
               "n_refines": sum("refine" in m["events"] for m in metrics)}  # fmt: skip
    if inpaint is not None:
        summary["label_inpaint"] = inpaint
    checked = [m for m in metrics if "lr_check" in m["events"]]
    if checked:
        summary["lr_flipped_views"] = [v["view"] for v in checked[0]["lr_flipped"]]
    if cfg.eval_at_end:
        t1 = time.perf_counter()
        summary["eval"] = evaluate(params, data, cfg, backend)
        summary["eval_s"] = time.perf_counter() - t1
    final = {k: v.detach().cpu().clone() for k, v in params.items()}
    return FitResult(params=final, metrics=metrics, summary=summary)


def _run_steps(params, optimizers, strategy, sstate, data, cfg, fs, backend, progress) -> list[dict]:
    metrics = []
    bar = tqdm(range(cfg.steps), desc="fit", disable=not progress, leave=False)
    for _ in bar:
        t = time.perf_counter()
        flipped = None
        if cfg.lr_swap_check and data.labels is not None and fs.step == cfg.steps // 2:
            flipped = find_swapped_views(params, data, cfg, backend)
            flip_views(data, flipped)
        m = fit_step(params, optimizers, strategy, sstate, data, cfg, fs, backend)
        if flipped is not None:
            m["events"].append("lr_check")
            m["lr_flipped"] = flipped
        m["time_s"] = time.perf_counter() - t
        metrics.append(m)
        if progress and (fs.step % 10 == 0 or fs.step == cfg.steps):
            bar.set_postfix(loss=f"{m['loss']:.4f}", psnr=f"{m['psnr']:.1f}", n=m["n_gaussians"])
    bar.close()
    return metrics
