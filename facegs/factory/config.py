"""TODO docstring."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

from facegs.core.hashing import canonical_json, derive_seed
from facegs.core.labels import CANONICAL, get_label_set
from facegs.fit.config import FitConfig, fit_config
from facegs.label.noise import parse_noise_spec
from facegs.render.views import RefineConfig

LABEL_SOURCES = ("existing", "parser", "noise")


@dataclass
class FactoryConfig:
    """Everything that decides a subject's samples (hashed into ``config_hash``).

    - ``labels``: where the initial labels come from: ``"existing"`` (the subject's own
      ``labels``, e.g. from ``facegs label``), ``"parser:CKPT"`` (a parser checkpoint path or
      fsspec URL, run with ``flip_tta``) or ``"noise:SPEC"`` (a noise model applied to
      ground-truth labels, for synthetic experiments; see ``facegs.label.noise``).
    - ``fit_preset`` + ``fit_overrides``: the :class:`facegs.fit.config.FitConfig`
      (:func:`facegs.fit.config.fit_config`); its ``seed`` is replaced per subject.
    - ``n_renders`` novel views per subject at poses sampled in the estimated head frame within
      ``yaw_range``/``pitch_range`` (degrees) with ``roll_jitter_deg``; ``res``: render size in px
      (None: the capture's width).
    - shard options: ``rgb_format`` (jpg|png), ``jpeg_quality``, ``maxcount`` samples per shard,
      ``store_alpha`` (an ``alpha.png`` member per render: the subject's coverage, so that trainers
      can put the premultiplied-over-black render over other backgrounds).
    - ``camera_head_frame_fallback``: when the fitted scene shows too few face parts to place the
      head frame (weak initial labels), use :func:`facegs.headframe.priors.head_frame_from_cameras` (the
      rig prior) instead of failing; samples record ``fit_metrics.head_frame_source``.
    """

    labels: str = "existing"
    flip_tta: bool = True
    fit_preset: str = "cpu_demo"
    fit_overrides: dict[str, Any] = field(default_factory=dict)
    n_renders: int = 32
    yaw_range: tuple[float, float] = (-90.0, 90.0)
    pitch_range: tuple[float, float] = (-40.0, 40.0)
    roll_jitter_deg: float = 5.0
    distribution: str = "uniform"
    res: int | None = None
    rgb_format: str = "jpg"
    jpeg_quality: int = 95
    maxcount: int = 64
    store_alpha: bool = True
    min_views: int = 4
    seed: int = 0
    camera_head_frame_fallback: bool = True

    def __post_init__(self) -> None:
        kind = self.labels.split(":", 1)[0]
        if kind not in LABEL_SOURCES or (kind != "existing" and ":" not in self.labels):
            raise ValueError(f"labels must be 'existing', 'parser:CKPT' or 'noise:SPEC', got '{self.labels}'")
        if kind == "noise":
            parse_noise_spec(self.labels.split(":", 1)[1])
        if self.rgb_format not in ("jpg", "png"):
            raise ValueError(f"rgb_format must be 'jpg' or 'png', got '{self.rgb_format}'")
        if self.n_renders < 1 or self.maxcount < 1:
            raise ValueError("n_renders and maxcount must be >= 1")
        fit_config(self.fit_preset, **self.fit_overrides)  # unknown preset or field -> error now
        self.yaw_range = tuple(float(x) for x in self.yaw_range)  # type: ignore[assignment]
        self.pitch_range = tuple(float(x) for x in self.pitch_range)  # type: ignore[assignment]

    @property
    def label_source(self) -> str:
        return self.labels.split(":", 1)[0]

    @property
    def label_arg(self) -> str:
        return self.labels.split(":", 1)[1] if ":" in self.labels else ""

    def fit(self, subject_seed: int) -> FitConfig:
        return fit_config(self.fit_preset, **{**self.fit_overrides, "seed": subject_seed % (2**31)})

    def refine(self, subject_seed: int) -> RefineConfig:
        return RefineConfig(fit=self.fit(subject_seed), n_renders=self.n_renders, yaw_range=self.yaw_range,
                            pitch_range=self.pitch_range, roll_jitter_deg=self.roll_jitter_deg,
                            distribution=self.distribution, res=self.res, seed=subject_seed % (2**31))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FactoryConfig":
        return cls(**d)


def config_hash(cfg: FactoryConfig, parser_sha256: str | None = None) -> str:
    """16 hex digits over the config, its resolved fit/render settings (library defaults included)
    and the parser checkpoint's content hash when labels come from a parser (the same path with
    other weights is another config)."""
    d = cfg.to_dict()
    # the resolved fit and render settings, so that a changed library default is a new config
    d["resolved"] = asdict(cfg.refine(0))
    if cfg.label_source == "parser":
        d["labels"] = f"parser:sha256={parser_sha256 or 'unknown'}"
    d["label_set"] = [CANONICAL, get_label_set(CANONICAL).version]
    return hashlib.sha256(canonical_json(d)).hexdigest()[:16]


def subject_seed(cfg: FactoryConfig, subject_id: str) -> int:
    """The per-subject seed every random choice of that subject derives from."""
    return derive_seed(cfg.seed, "factory", subject_id)
