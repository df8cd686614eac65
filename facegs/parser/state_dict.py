"""BiSeNet state dicts as people ship them: wrapped (``state_dict``, ``params_ema``, ...), prefixed
(``module.``), possibly of another size; unwrapped, cleaned and checked key by key against the
architecture, with a :class:`CheckpointMismatchError` that lists what is missing or unexpected.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from facegs.core.errors import InputError
from facegs.parser.bisenet import expected_state_shapes

PathLike = str | os.PathLike

_WRAPPER_KEYS = ("state_dict", "params_ema", "params", "model", "net")


_MAX_NAMES = 5


class CheckpointMismatchError(InputError):
    """A state_dict does not match the expected layout. Lists of the offending keys are attributes."""

    def __init__(
        self,
        message: str,
        *,
        missing: list[str],
        unexpected: list[str],
        mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
        path: str | None = None,
    ) -> None:
        self.missing = missing
        self.unexpected = unexpected
        self.mismatched = mismatched  # (key, shape in file, expected shape)
        super().__init__(message, field="state_dict", path=path)


def _is_tensor_dict(d: Mapping[str, Any]) -> bool:
    return len(d) > 0 and all(isinstance(v, torch.Tensor) for v in d.values())


def unwrap_state_dict(obj: Any, path: str | None) -> Mapping[str, torch.Tensor]:
    """Peel ``{"state_dict": ...}`` / ``{"params": ...}`` / ... wrappers off a loaded checkpoint."""
    for _ in range(4):
        if not isinstance(obj, Mapping):
            raise InputError(f"expected a state_dict (a dict of tensors), got {type(obj).__name__}", path=path)
        if _is_tensor_dict(obj):
            return obj
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            raise InputError(
                f"not a state_dict and no known wrapper key {_WRAPPER_KEYS}; top-level keys: {sorted(map(str, obj))[:10]}",
                path=path,
            )
        obj = inner
    raise InputError("checkpoint wrappers nested too deeply", path=path)


def clean_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip ``module.`` prefixes (DataParallel/DDP) and drop ``num_batches_tracked`` entries."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        while key.startswith("module."):
            key = key[len("module.") :]
        if key.endswith("num_batches_tracked"):
            continue
        out[key] = value
    return out


def _names(keys: list[str]) -> str:
    head = ", ".join(keys[:_MAX_NAMES])
    return head + (f" (+{len(keys) - _MAX_NAMES} more)" if len(keys) > _MAX_NAMES else "")


def check_state_dict(
    state_dict: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]], *, path: str | None = None
) -> None:
    """Raise :class:`CheckpointMismatchError` naming missing/unexpected keys and shape mismatches."""
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        (k, tuple(v.shape), tuple(expected[k])) for k, v in state_dict.items() if k in expected and tuple(v.shape) != tuple(expected[k])
    ]
    if not (missing or unexpected or mismatched):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys: {_names(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys: {_names(unexpected)}")
    if mismatched:
        shown = [f"{k} {list(a)} (expected {list(b)})" for k, a, b in mismatched]
        parts.append(f"{len(mismatched)} shape mismatches: {_names(shown)}")
    raise CheckpointMismatchError(
        "state_dict does not match the BiSeNet layout: " + "; ".join(parts),
        missing=missing,
        unexpected=unexpected,
        mismatched=mismatched,
        path=path,
    )


def torch_load_weights(path: PathLike, map_location: str | torch.device) -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # UnpicklingError for anything but plain containers of tensors
        raise InputError(f"cannot load as a weights-only checkpoint: {e}", path=str(path)) from e


def infer_bisenet_config(state_dict: Mapping[str, torch.Tensor]) -> tuple[int, float]:
    """``(n_classes, width)`` of a cleaned BiSeNet state_dict, from ``conv_out.conv_out.weight`` and the stem."""
    try:
        n_classes = int(state_dict["conv_out.conv_out.weight"].shape[0])
        width = int(state_dict["cp.resnet.conv1.weight"].shape[0]) / 64.0
    except KeyError as e:
        raise CheckpointMismatchError(
            f"not a BiSeNet state_dict: missing key {e.args[0]}", missing=[e.args[0]], unexpected=[], mismatched=[]
        ) from None
    return n_classes, width


def load_bisenet_state_dict(
    path_or_dict: PathLike | Mapping[str, Any],
    *,
    n_classes: int | None = None,
    width: float = 1.0,
    map_location: str | torch.device = "cpu",
) -> dict[str, torch.Tensor]:
    """Load and validate a BiSeNet state_dict in the published layout; returns ``{key: tensor}``.

    Accepts a path (``torch.load(..., weights_only=True)``) or an already loaded object: the bare
    ``79999_iter.pth`` / facexlib ``parsing_bisenet.pth`` dict, optionally wrapped in
    ``{"state_dict"|"params_ema"|"params"|"model"|"net": ...}`` (a facegs checkpoint is accepted too).
    ``module.`` prefixes are stripped and ``num_batches_tracked`` entries dropped. The result is
    checked against ``BiSeNet(n_classes, width)`` (``n_classes`` defaults to the file's main head);
    a mismatch raises :class:`CheckpointMismatchError` naming the first offending keys.
    """
    path = None if isinstance(path_or_dict, Mapping) else str(path_or_dict)
    obj = path_or_dict if isinstance(path_or_dict, Mapping) else torch_load_weights(path_or_dict, map_location)
    state_dict = clean_state_dict(unwrap_state_dict(obj, path))
    if n_classes is None:
        w = state_dict.get("conv_out.conv_out.weight")
        n_classes = int(w.shape[0]) if isinstance(w, torch.Tensor) and w.ndim == 4 else 19
    check_state_dict(state_dict, expected_state_shapes(n_classes, width), path=path)
    return state_dict
