"""Input normalisation for face parsers: RGB images -> normalised float tensors ``[B, 3, H, W]``.

The published BiSeNet face parser (face-parsing.PyTorch ``79999_iter.pth``, facexlib
``parsing_bisenet.pth``) expects RGB in ``[0, 1]`` normalised with the ImageNet mean
``(0.485, 0.456, 0.406)`` and std ``(0.229, 0.224, 0.225)``, at 512x512.

Value convention: ``uint8`` input is divided by 255; floating-point input is taken to be in
``[0, 1]`` already (it is NOT rescaled, whatever its range).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Normalization:
    """Per-channel ``(x - mean) / std`` applied to RGB in ``[0, 1]``.

    Named presets (see :meth:`from_spec`): ``"imagenet"`` (the published BiSeNet's) and ``"unit"``
    (mean 0, std 1: the model takes RGB in ``[0, 1]`` as is). Stored in checkpoint metadata as
    the plain dict of :meth:`to_dict`.
    """

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"normalisation needs 3 means and 3 stds, got {self.mean} / {self.std}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"normalisation std must be positive, got {self.std}")

    def to_dict(self) -> dict[str, list[float]]:
        """JSON-able form: ``{"mean": [3 floats], "std": [3 floats]}``."""
        return {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]}

    @classmethod
    def from_spec(cls, spec: Normalization | str | Mapping[str, Any] | None) -> Normalization:
        """Build from a preset name (``"imagenet"``, ``"unit"``), a ``{"mean", "std"}`` mapping,
        an instance (returned as is) or ``None`` (= ``"imagenet"``)."""
        if spec is None or isinstance(spec, Normalization):
            return spec or cls()
        if isinstance(spec, str):
            presets = {"imagenet": cls(), "unit": cls((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))}
            if spec not in presets:
                raise ValueError(f"unknown normalisation preset '{spec}'; use one of {sorted(presets)} or a dict")
            return presets[spec]
        if isinstance(spec, Mapping):
            try:
                return cls(tuple(float(v) for v in spec["mean"]), tuple(float(v) for v in spec["std"]))  # type: ignore[arg-type]
            except KeyError as e:
                raise ValueError(f"normalisation dict needs 'mean' and 'std', got keys {sorted(spec)}") from e
        raise TypeError(f"cannot build a normalisation from {type(spec).__name__}")


def to_nchw(rgb: np.ndarray | torch.Tensor, channels_last: bool | None = None) -> torch.Tensor:
    """``[B, 3, H, W]`` or ``[B, H, W, 3]`` array/tensor -> ``[B, 3, H, W]`` tensor (same dtype).

    The layout is inferred from which axis has size 3; pass ``channels_last`` when both do
    (e.g. an image 3 pixels tall). numpy input is converted without copying where possible.
    """
    x = torch.as_tensor(rgb) if isinstance(rgb, np.ndarray) else rgb
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a numpy array or torch tensor, got {type(rgb).__name__}")
    if x.ndim != 4:
        raise ValueError(f"expected a batch of RGB images [B,3,H,W] or [B,H,W,3], got shape {list(x.shape)}")
    if channels_last is None:
        first, last = x.shape[1] == 3, x.shape[-1] == 3
        if first and last:
            raise ValueError(
                f"ambiguous layout for shape {list(x.shape)} (axis 1 and axis 3 both have size 3): "
                "pass channels_last=True/False"
            )
        if not (first or last):
            raise ValueError(f"expected 3 colour channels on axis 1 or 3, got shape {list(x.shape)}")
        channels_last = last
    if channels_last:
        if x.shape[-1] != 3:
            raise ValueError(f"channels_last input must be [B,H,W,3], got shape {list(x.shape)}")
        return x.permute(0, 3, 1, 2)
    if x.shape[1] != 3:
        raise ValueError(f"channels-first input must be [B,3,H,W], got shape {list(x.shape)}")
    return x


def normalize_rgb(
    rgb: np.ndarray | torch.Tensor,
    norm: Normalization | str | Mapping[str, Any] | None = None,
    *,
    channels_last: bool | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """RGB ``uint8`` or float ``[B, 3, H, W]`` / ``[B, H, W, 3]`` -> normalised ``[B, 3, H, W]`` float.

    ``uint8`` values are divided by 255 first; float input must already be in ``[0, 1]``. ``norm``
    defaults to the ImageNet statistics the published BiSeNet checkpoint expects (it also expects
    512x512 input: resizing is the caller's job, see ``facegs.parser.checkpoint.ParserModel``).
    The result lives on the input tensor's device and is contiguous.
    """
    n = Normalization.from_spec(norm)
    x = to_nchw(rgb, channels_last)
    if x.dtype == torch.uint8:
        x = x.to(dtype) / 255.0
    elif x.dtype.is_floating_point:
        x = x.to(dtype)
    else:
        raise TypeError(f"RGB input must be uint8 or floating point, got {x.dtype}")
    mean = torch.tensor(n.mean, dtype=dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(n.std, dtype=dtype, device=x.device).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()
