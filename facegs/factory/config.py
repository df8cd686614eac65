"""The factory's configuration of one dataset, and the hash that says whether a subject is done.

In: the options of a factory run (:class:`FactoryConfig`). Out: the per-subject
:class:`facegs.factory.subject.RefineConfig` (with the subject's seed, :func:`subject_seed`) and
:func:`config_hash`, stored in every sample and done marker: a rerun skips a subject only when its
marker has the same hash, so a changed option or library default rebuilds it.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from facegs.core.hashing import canonical_json, derive_seed
from facegs.core.labels import CANONICAL, get_label_set
from facegs.core.options import opt
from facegs.factory.subject import RefineConfig
from facegs.fit.config import PRESETS, FitConfig, fit_config
from facegs.fit.support import SupportConfig
from facegs.headframe.place import PlacementConfig
from facegs.label.noise import parse_noise_spec
from facegs.render.cleanup import CleanupConfig
from facegs.render.views import NovelViewConfig

LABEL_SOURCES = ("existing", "parser", "noise")


@dataclass
class FactoryConfig(NovelViewConfig):
    """Everything that decides a subject's samples (hashed into :func:`config_hash`).

    The novel views (``n_renders``, ``yaw_range``, ``pitch_range``, ``roll_jitter_deg``,
    ``distribution``, ``res``) are :class:`facegs.render.views.NovelViewConfig`'s fields; the fit is
    ``fit_preset`` + ``fit_overrides`` (:func:`facegs.fit.config.fit_config`, its ``seed`` replaced
    per subject). Every field's ``opt`` metadata documents it and is how the factory's command line
    (``python -m ray_jobs.build_dataset``) spells it.
    """

    labels: str = field(default="existing", metadata=opt(
        "initial labels: 'existing' (labels already in the subjects, e.g. from facegs label), 'parser:CKPT' "
        "(path or URL of a parser checkpoint: facegs, BiSeNet state_dict or TorchScript) or 'noise:SPEC' (noise "
        "model on ground-truth labels, synthetic subjects only; e.g. noise:pixel:0.5)"))
    flip_tta: bool = field(default=True, metadata=opt("parser labelling without left/right flip TTA",
                                                      flag="--no-flip-tta"))
    fit_preset: str = field(default="cpu_demo", metadata=opt("fit preset", flag="--preset", choices=tuple(PRESETS)))
    fit_overrides: dict[str, Any] = field(default_factory=dict, metadata=opt(
        "JSON dict of further FitConfig fields (e.g. '{\"steps\": 300}')"))
    rgb_format: str = field(default="jpg", metadata=opt("RGB member format", choices=("jpg", "png")))
    jpeg_quality: int = field(default=95, metadata=opt("JPEG quality of the RGB member"))
    maxcount: int = field(default=64, metadata=opt("samples per shard"))
    store_alpha: bool = field(default=True, metadata=opt(
        "do not store the renders' coverage (alpha.png); trainers then cannot composite renders over new "
        "backgrounds exactly (fine-tuning falls back to the background labels)", flag="--no-alpha"))
    min_views: int = field(default=4, metadata=opt("subjects with fewer views fail"))
    seed: int = field(default=0, metadata=opt("global seed (per-subject seeds derive from it)"))
    min_quality: float = field(default=0.0, metadata=opt(
        "subjects whose ground-truth-free quality score (facegs.factory.quality, in [0, 1]) is below this fail "
        "with the reason instead of being shipped (0 = keep every subject; the score is in every done marker)"))
    head_frame_policy: str = field(default="fallback", metadata=PlacementConfig.__dataclass_fields__["policy"].metadata)
    relabel_unsupported: bool = field(default=True, metadata=SupportConfig.__dataclass_fields__["enabled"].metadata)
    ignore_unobserved: bool = field(default=False, metadata=CleanupConfig.__dataclass_fields__["ignore_unobserved"].metadata)
    allow_external_paths: bool = field(default=False, metadata=opt(
        "read manifest paths outside a subject's directory (absolute, '..', links out); by default such a subject "
        "fails. Not part of the config hash: it decides which subjects may be read, not their samples"))

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
        views = {f.name: getattr(self, f.name) for f in fields(NovelViewConfig)}
        return RefineConfig(**views, fit=self.fit(subject_seed), seed=subject_seed % (2**31),
                            head_frame=PlacementConfig(policy=self.head_frame_policy),
                            support=SupportConfig(enabled=self.relabel_unsupported),
                            cleanup_cfg=CleanupConfig(ignore_unobserved=self.ignore_unobserved))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FactoryConfig:
        return cls(**d)


def config_hash(cfg: FactoryConfig, parser_sha256: str | None = None) -> str:
    """16 hex digits over the config, its resolved fit/render settings (library defaults included)
    and the parser checkpoint's content hash when labels come from a parser (the same path with
    other weights is another config)."""
    d = cfg.to_dict()
    d.pop("allow_external_paths")  # which subjects may be read, not what their samples are
    # the resolved fit and render settings, so that a changed library default is a new config
    d["resolved"] = asdict(cfg.refine(0))
    if cfg.label_source == "parser":
        d["labels"] = f"parser:sha256={parser_sha256 or 'unknown'}"
    d["label_set"] = [CANONICAL, get_label_set(CANONICAL).version]
    return hashlib.sha256(canonical_json(d)).hexdigest()[:16]


def subject_seed(cfg: FactoryConfig, subject_id: str) -> int:
    """The per-subject seed every random choice of that subject derives from."""
    return derive_seed(cfg.seed, "factory", subject_id)
