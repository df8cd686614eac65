"""Options of one subject's fit: :class:`FitConfig` (with :class:`InitConfig`), named presets.

In: nothing (configuration). Out: a :class:`FitConfig` from :func:`fit_config` (a preset plus
overrides); :meth:`FitConfig.resolved` fills the schedule (densification, SH degree, consensus
warm-up) from ``steps``. Presets: ``test`` (unit tests, 32 px), ``cpu_demo`` (24 views at 128 px on
2 cores), ``gpu`` (a 7k-step 3DGS schedule for the gsplat backend), ``gpu_fast`` (the same compressed
to 2k steps, proposed for 16 views at 512 px), ``default`` (the field defaults).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from facegs.core.options import opt


@dataclass(frozen=True)
class InitConfig:
    """How to place the initial Gaussians (see the module docstring)."""

    num_points: int = 10_000
    source: str = "auto"  # auto | points | carve | uniform
    grid_res: int = 64  # voxels along each axis of the common volume (carving)
    min_fg_fraction: float = 0.9  # fraction of visible views whose foreground must contain a voxel
    min_visible_fraction: float = 0.5  # fraction of views that must see a voxel / point
    opacity: float = 0.1
    scale_mult: float = 1.0  # multiplies the k-NN scale
    knn: int = 3
    seed: int = 0


@dataclass
class FitConfig:
    """Hyper-parameters of one subject fit. Defaults: the CPU demo (600 steps, 24 views, 128 px).

    Iteration numbers left at ``None`` are derived from ``steps`` by :meth:`resolved` (the 3DGS
    schedule of 30k steps compressed to ``steps``).
    """

    steps: int = field(default=600, metadata=opt("optimisation steps of the fit"))
    seed: int = 0
    views_per_step: int = 2
    downscale: float = field(default=1.0, metadata=opt("fit at the capture resolution divided by this (images and K)"))
    tile_size: int | None = None  # rasterizer tile; None: 8 on the cpu and torch backends, 16 on gsplat
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
    label_mode: str = field(default="probs", metadata=opt(
        "label rendering: blended per-Gaussian probabilities, or the softmax of blended logits (probs measured "
        "better, docs/benchmarks.md)", choices=("probs", "logits")))
    label_bg_logit: float = 10.0  # background-class logit composited with T (logits mode)
    label_background: bool = True  # composite the background class with the transmittance
    # False: noisy labels must not drag the geometry (measured with base-parser labels, both rigs:
    # +8..+24 mIoU at |yaw| >= 75 and a 6 deg instead of 34 deg head frame; docs/benchmarks.md)
    # Remeasured on the 69 label-refinement fits with the robust head frame (with consensus_outliers):
    # the base parser's labels lose 2-6 mIoU at |yaw| 60-90 with it on, exact labels gain 6-13
    # (docs/benchmarks.md, "Experiment, not adopted"): on for labels a user trusts, off for a parser's.
    label_grad_to_geometry: bool = field(default=False, metadata=opt(
        "let the label loss move the geometry too (default: it updates the class logits only)",
        flag="--label-grad-geometry"))
    confidence_weighting: bool = field(default=True, metadata=opt("ignore the initial labels' confidence maps",
                                                                   flag="--no-confidence"))
    # class-balanced label loss: a class's pixels weigh (median class frequency / its frequency) ** this
    # (clipped to [1, label_class_weight_max]) in the subject's input labels; 0 = off. Measured on clean
    # labels: eyes IoU 53/43 -> 66/62, brows 28/28 -> 50/44 in novel views (docs/benchmarks.md)
    label_class_balance: float = field(default=0.5, metadata=opt(
        "class-balanced label loss: rare classes (eyes, brows) weigh (median frequency / frequency) ** this; 0 = off"))
    label_class_weight_max: float = 10.0
    # a 'background' label where the view's own mask (or alpha) says foreground is the parser eating
    # the silhouette (profile views) or a noisy pixel: the matte decides what is foreground, so that
    # label weighs (1 - mask) (docs/benchmarks.md, label refinement: pose and pixel noise)
    matte_over_background: bool = field(default=True, metadata=opt(
        "let 'background' labels inside a view's foreground mask pull the class logits too (default: the mask "
        "decides, they weigh 1 - mask)", flag="--no-matte-over-background"))
    # after the fit, thinly seen Gaussians take their well-seen neighbours' classes (facegs.fit.inpaint):
    # the prior weighs this many pixels x rho / (1 - rho), rho = the labels' disagreement with the fit.
    # Measured on the 8-view frontal arc at pixel noise 0.5: grid mIoU 34.6 -> 44.2, no change with
    # clean labels or on the 48-view rig (docs/benchmarks.md)
    label_inpaint_px: float = field(default=8.0, metadata=opt(
        "after the fit, Gaussians seen by few labelled pixels take their well-seen neighbours' classes; the "
        "neighbourhood weighs this many pixels x rho/(1-rho), rho = how often the input labels disagree with "
        "the fit (0 = off)"))
    # half-way through the fit, views whose left/right labels agree far better with the consensus
    # once flipped are flipped for the rest of it (facegs.fit.lr_views)
    lr_swap_check: bool = field(default=True, metadata=opt(
        "keep views whose left/right labels are swapped as a whole (detected against the 3D consensus half-way "
        "through the fit) as they are", flag="--no-lr-swap-check"))
    consensus_outliers: bool = field(default=False, metadata=opt(
        "EM-style down-weighting of labels that disagree with the 3D consensus"))
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

    def resolved(self) -> FitConfig:
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
    # FitConfig's own field defaults (what `facegs refine` ran before it had presets)
    "default": {},
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
    # GPU, faster (proposed for the factory, bench/gpu_check.sh): 16 views at 512 px, the gpu schedule
    # compressed to 2k steps (each view seen ~125 times instead of ~290); label quality against `gpu`
    # still to be measured on a GPU (docs/benchmarks.md)
    "gpu_fast": dict(steps=2_000, views_per_step=1, sh_degree=3, max_gaussians=200_000, tile_size=16,
                     init=InitConfig(num_points=30_000, grid_res=96), refine_start=150, refine_every=50,
                     refine_stop=1_000, reset_every=900, sh_degree_interval=300),
}  # fmt: skip


def fit_config(preset: str = "cpu_demo", **overrides: Any) -> FitConfig:
    """A :class:`FitConfig` from a named preset (``test``, ``cpu_demo``, ``gpu``, ``gpu_fast``) plus overrides."""
    if preset not in PRESETS:
        raise KeyError(f"unknown fit preset '{preset}'; available: {sorted(PRESETS)}")
    return FitConfig(**{**PRESETS[preset], **overrides})
