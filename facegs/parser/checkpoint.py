"""Face parser checkpoints: the published BiSeNet layout, facegs' own format, TorchScript; and ParserModel.

Safety: every ``torch.load`` here runs with ``weights_only=True``, so no arbitrary object is ever
unpickled. TorchScript files (:func:`torch.jit.load`) carry their own TorchScript code: load only
files you trust.

Formats :func:`load_parser` recognises, in this order:

1. **TorchScript** (a zip archive with ``code/`` and ``constants.pkl``): the caller declares the
   label set of its outputs (``label_set=``), unless the file was written by
   :func:`export_torchscript`, which embeds the facegs metadata as an extra file (a declaration
   overrides it). Input size and normalisation default to the embedded metadata, else to "run at
   the image's own size" and ImageNet statistics.
2. **facegs checkpoint** (:func:`save_parser`): ``{"format": "facegs.parser", "format_version": 1,
   "meta": {...}, "state_dict": {key: tensor}}``; ``meta`` holds only str/int/float/bool/list/dict
   (arch, width, n_classes, label_set, input_size, normalisation, facegs_version, extra).
3. **bare BiSeNet state_dict** (face-parsing.PyTorch ``79999_iter.pth``, facexlib
   ``parsing_bisenet.pth``, optionally wrapped and/or ``module.``-prefixed): label set
   ``celebamask19`` unless declared, 512x512 input, ImageNet normalisation.

Mapping to the canonical set: a parser's logits ``[B, K_src, H, W]`` in its own label set become
``[B, 19, H, W]`` in ``celebamask19`` order through :func:`facegs.core.labels.mapping_lut`. Canonical class
``c`` gets the logit of the source class that maps to it; if several source classes map to ``c``
their logits are merged with ``logsumexp`` (softmax probabilities add up); a canonical class no
source class maps to gets :data:`MISSING_LOGIT` (a finite, very negative value, so that softmax gives
it ~0 probability and interpolation never produces NaN). Source classes that map to no canonical
class are dropped.
"""

from __future__ import annotations

import copy
import io
import json
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

import facegs
from facegs.core.errors import InputError
from facegs.core.labels import CANONICAL, get_label_set
from facegs.core.storage import atomic_write_bytes
from facegs.parser.bisenet import PUBLISHED_INPUT_SIZE, BiSeNet, MainHead, expected_state_shapes
from facegs.parser.model import ParserModel
from facegs.parser.normalize import Normalization
from facegs.parser.state_dict import (
    PathLike,
    check_state_dict,
    clean_state_dict,
    infer_bisenet_config,
    torch_load_weights,
    unwrap_state_dict,
)

FORMAT_NAME = "facegs.parser"


FORMAT_VERSION = 1


TORCHSCRIPT_META_FILE = "facegs_meta.json"




def _plain(obj: Any, what: str) -> Any:
    """JSON round trip: the value as plain str/int/float/bool/list/dict (what weights_only accepts)."""
    try:
        return json.loads(json.dumps(obj))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} must be JSON-serialisable (str/int/float/bool/list/dict): {e}") from e


def _unwrap_module(model: nn.Module | ParserModel) -> BiSeNet:
    """The BiSeNet inside a ParserModel / DataParallel / DDP wrapper."""
    while not isinstance(model, BiSeNet) and hasattr(model, "module"):
        model = model.module  # type: ignore[assignment]
    if not isinstance(model, BiSeNet):
        raise TypeError(f"expected a BiSeNet (or a wrapper of one), got {type(model).__name__}")
    return model


def parser_meta(
    model: BiSeNet,
    *,
    label_set: str = CANONICAL,
    input_size: tuple[int, int] | None = PUBLISHED_INPUT_SIZE,
    normalization: Normalization | str | Mapping[str, Any] | None = None,
    extra_meta: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON-able metadata :func:`save_parser` stores (and :func:`export_torchscript` embeds)."""
    ls = get_label_set(label_set)
    if ls.num_classes != model.n_classes:
        raise ValueError(f"label set '{label_set}' has {ls.num_classes} classes; the model has {model.n_classes}")
    meta = {
        "arch": "bisenet",
        "width": float(model.width),
        "n_classes": int(model.n_classes),
        "label_set": label_set,
        "input_size": None if input_size is None else [int(input_size[0]), int(input_size[1])],
        "normalization": Normalization.from_spec(normalization).to_dict(),
        "facegs_version": facegs.__version__,
        "extra": dict(extra_meta or {}),
    }
    return _plain(meta, "checkpoint metadata")


def save_parser(
    path: PathLike,
    model: nn.Module | ParserModel,
    *,
    label_set: str = CANONICAL,
    width: float | None = None,
    input_size: tuple[int, int] | None = PUBLISHED_INPUT_SIZE,
    normalization: Normalization | str | Mapping[str, Any] | None = None,
    extra_meta: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write a facegs parser checkpoint atomically (temporary file + rename); returns its ``meta``.

    The file is ``{"format", "format_version", "meta", "state_dict"}`` holding only tensors and plain
    values, so it loads with ``torch.load(path, weights_only=True)``. ``width`` defaults to the
    model's (a different value is an error); ``extra_meta`` must be JSON-serialisable.
    """
    net = _unwrap_module(model)
    if width is not None and float(width) != net.width:
        raise ValueError(f"width={width} but the model was built with width={net.width}")
    meta = parser_meta(net, label_set=label_set, input_size=input_size, normalization=normalization, extra_meta=extra_meta)
    state_dict = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    buf = io.BytesIO()
    torch.save({"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "meta": meta, "state_dict": state_dict}, buf)
    atomic_write_bytes(path, buf.getvalue())
    return meta


def _bisenet_from_state_dict(state_dict: Mapping[str, torch.Tensor], n_classes: int, width: float, path: str | None) -> BiSeNet:
    check_state_dict(state_dict, expected_state_shapes(n_classes, width), path=path)
    model = BiSeNet(n_classes, width)
    model.load_state_dict(state_dict, strict=True)
    return model


def _is_torchscript(path: PathLike) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def _resolve_input_size(
    requested: tuple[int, int] | Literal["native"] | None, default: list[int] | tuple[int, int] | None
) -> tuple[int, int] | None:
    if requested == "native":
        return None
    if requested is None:
        return None if default is None else (int(default[0]), int(default[1]))
    return (int(requested[0]), int(requested[1]))  # type: ignore[index]


def _check_declared(declared: str | None, stored: str, path: str) -> str:
    if declared is not None and declared != stored:
        raise InputError(f"label_set='{declared}' declared but the checkpoint says '{stored}'", field="label_set", path=path)
    return stored


def load_parser(
    path: PathLike,
    device: str | torch.device = "cpu",
    *,
    label_set: str | None = None,
    input_size: tuple[int, int] | Literal["native"] | None = None,
    normalization: Normalization | str | Mapping[str, Any] | None = None,
) -> ParserModel:
    """Load a face parser from a facegs checkpoint, a bare BiSeNet state_dict or a TorchScript file.

    ``label_set``: the label set of the model's outputs. Required for TorchScript files not written
    by :func:`export_torchscript` (for those it overrides the embedded metadata); for a bare
    state_dict it defaults to ``celebamask19``; for a facegs checkpoint it must match the file.
    ``input_size``: ``(h, w)`` to run the model at, ``"native"`` for each image's own size, ``None``
    for the file's default (facegs meta; 512x512 for a bare state_dict; native for TorchScript).
    ``normalization``: overrides the file's (default ImageNet). See the module docstring.
    """
    spath = str(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"parser checkpoint not found: {spath}")
    if _is_torchscript(path):
        extra = {TORCHSCRIPT_META_FILE: ""}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated upstream
            module = torch.jit.load(spath, map_location=device, _extra_files=extra)
        raw = extra[TORCHSCRIPT_META_FILE]
        stored = json.loads(raw) if raw else {}
        if label_set is None and "label_set" not in stored:
            raise InputError("a TorchScript parser needs its label set declared (label_set=...)", field="label_set", path=spath)
        ls = label_set or stored["label_set"]
        meta = {**stored, "source": "torchscript", "path": spath, "label_set": ls}
        return ParserModel(
            module,
            ls,
            input_size=_resolve_input_size(input_size, stored.get("input_size")),
            normalization=normalization if normalization is not None else stored.get("normalization"),
            meta=meta,
            device=device,
        )
    obj = torch_load_weights(path, "cpu")
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT_NAME:
        if int(obj.get("format_version", 0)) > FORMAT_VERSION:
            raise InputError(f"facegs parser format_version {obj['format_version']} is newer than this facegs reads ({FORMAT_VERSION})", path=spath)
        meta = dict(obj["meta"])
        if meta.get("arch") != "bisenet":
            raise InputError(f"unknown parser arch '{meta.get('arch')}'", field="meta.arch", path=spath)
        ls = _check_declared(label_set, meta["label_set"], spath)
        model = _bisenet_from_state_dict(obj["state_dict"], int(meta["n_classes"]), float(meta["width"]), spath)
        return ParserModel(
            model,
            ls,
            input_size=_resolve_input_size(input_size, meta.get("input_size")),
            normalization=normalization if normalization is not None else meta.get("normalization"),
            meta={**meta, "source": "facegs", "path": spath},
            device=device,
        )
    state_dict = clean_state_dict(unwrap_state_dict(obj, spath))
    n_classes, width = infer_bisenet_config(state_dict)
    ls = label_set or CANONICAL
    model = _bisenet_from_state_dict(state_dict, n_classes, width, spath)
    meta = parser_meta(model, label_set=ls, input_size=PUBLISHED_INPUT_SIZE, normalization=normalization)
    return ParserModel(
        model,
        ls,
        input_size=_resolve_input_size(input_size, PUBLISHED_INPUT_SIZE),
        normalization=normalization,
        meta={**meta, "source": "bisenet_state_dict", "path": spath},
        device=device,
    )


def export_torchscript(
    model: nn.Module | ParserModel,
    path: PathLike,
    example_size: tuple[int, int, int, int] = (1, 3, 512, 512),
    *,
    label_set: str = CANONICAL,
    input_size: tuple[int, int] | None = PUBLISHED_INPUT_SIZE,
    normalization: Normalization | str | Mapping[str, Any] | None = None,
    extra_meta: Mapping[str, Any] | None = None,
    atol: float = 1e-5,
) -> torch.jit.ScriptModule:
    """Script a BiSeNet's main head and save it atomically; returns the scripted module.

    The saved module maps normalised ``[B, 3, H, W]`` float to ``[B, n_classes, H, W]`` main-head
    logits at any size; the facegs metadata (:func:`parser_meta`) is embedded as the extra file
    ``facegs_meta.json`` so that :func:`load_parser` needs no declarations. The export is checked on
    a random input of ``example_size``: scripted and eager logits must agree within ``atol``. The
    caller's model is not modified (a copy in eval mode is scripted).
    """
    net = copy.deepcopy(_unwrap_module(model)).cpu().eval()
    meta = parser_meta(net, label_set=label_set, input_size=input_size, normalization=normalization, extra_meta=extra_meta)
    wrapper = MainHead(net).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated but still the portable format
        scripted = torch.jit.script(wrapper)
    x = torch.randn(*example_size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref, got = net.forward_main(x), scripted(x)
    err = float((ref - got).abs().max())
    if not err <= atol:
        raise RuntimeError(f"TorchScript export differs from the eager model by {err:.3g} > {atol}")
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(scripted, buf, _extra_files={TORCHSCRIPT_META_FILE: json.dumps(meta)})
    atomic_write_bytes(path, buf.getvalue())
    return scripted
