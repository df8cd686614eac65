"""A Gaussian scene with shared geometry, view-dependent colour and per-Gaussian class logits.

The scene is a plain ``dict[str, torch.nn.Parameter]`` (the gsplat strategy convention), so that
``gsplat.strategy.DefaultStrategy`` duplicates, splits and prunes every entry with its optimizer
state. Entries (N Gaussians, K = number of classes of the label set, B = (sh_degree + 1)^2 bases):

- ``means``     [N, 3]      world coordinates
- ``scales``    [N, 3]      log of the standard deviations along the local axes
- ``quats``     [N, 4]      rotation quaternion (w, x, y, z), unnormalised
- ``opacities`` [N]         logit of the opacity
- ``sh0``       [N, 1, 3]   degree-0 SH coefficient of RGB (colour = SH_C0 * sh0 + 0.5)
- ``shN``       [N, B-1, 3] higher-degree SH coefficients (B-1 = 0 for degree 0)
- ``logits``    [N, K]      class logits (``celebamask19``: K = 19)

This is exactly the parameterisation of the original 3DGS code and of gsplat, which is also what
the PLY file stores (see :func:`save_ply`). SH is evaluated with gsplat's real-SH constants and
basis order (``gsplat.cuda._torch_impl._eval_sh_bases_fast``), view direction = mean - camera
centre, and the result is ``clamp_min(sh + 0.5, 0)`` as in ``gsplat.rasterization``.

Cameras follow facegs conventions (OpenCV, world-to-camera 4x4 ``viewmats``).
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from facegs.core.labels import CANONICAL, get_label_set
from facegs.core.storage import atomic_write_bytes

SH_C0 = 0.28209479177387814
SCENE_KEYS = ("means", "scales", "quats", "opacities", "sh0", "shN", "logits")
TENSOR_FORMAT = "facegs.scene"
TENSOR_FORMAT_VERSION = 1
PLY_COMMENT_PREFIX = "facegs"

Params = dict[str, torch.nn.Parameter]


# ----------------------------------------------------------------------------------------------
# construction and activation
# ----------------------------------------------------------------------------------------------


def num_sh_bases(sh_degree: int) -> int:
    """Number of SH basis functions of a degree (0..3): (degree + 1)^2."""
    if not 0 <= sh_degree <= 4:
        raise ValueError(f"sh_degree must be in 0..4, got {sh_degree}")
    return (sh_degree + 1) ** 2


def sh_degree_of(params: dict[str, Tensor]) -> int:
    """SH degree stored in a scene (from the shape of ``shN``)."""
    b = params["shN"].shape[1] + 1
    d = int(round(math.sqrt(b))) - 1
    if (d + 1) ** 2 != b:
        raise ValueError(f"shN has {b - 1} coefficients: not (degree+1)^2 - 1 for any degree")
    return d


def rgb_to_sh0(rgb: Tensor) -> Tensor:
    """[..., 3] RGB in [0, 1] -> degree-0 SH coefficient (inverse of ``SH_C0 * sh0 + 0.5``)."""
    return (rgb - 0.5) / SH_C0


def make_params(
    means: Tensor,
    rgb: Tensor,
    log_scales: Tensor,
    *,
    num_classes: int = 19,
    sh_degree: int = 3,
    opacity: float = 0.1,
    quats: Tensor | None = None,
    logits: Tensor | None = None,
) -> Params:
    """Build a scene dict from points.

    ``means`` [N, 3], ``rgb`` [N, 3] in [0, 1], ``log_scales`` [N, 3] (or [N] for isotropic);
    ``quats`` [N, 4] wxyz (default identity), ``logits`` [N, K] (default 0: uniform over classes).
    Opacity is stored as its logit. All tensors become float32 ``nn.Parameter``\\ s on the device of
    ``means``.
    """
    n = means.shape[0]
    dev = means.device
    f32 = dict(dtype=torch.float32, device=dev)
    if log_scales.dim() == 1:
        log_scales = log_scales[:, None].expand(n, 3)
    if quats is None:
        quats = torch.zeros(n, 4, **f32)
        quats[:, 0] = 1.0
    if logits is None:
        logits = torch.zeros(n, num_classes, **f32)
    tensors = {
        "means": means,
        "scales": log_scales,
        "quats": quats,
        "opacities": torch.full((n,), math.log(opacity / (1.0 - opacity)), **f32),
        "sh0": rgb_to_sh0(rgb.to(**f32))[:, None, :],
        "shN": torch.zeros(n, num_sh_bases(sh_degree) - 1, 3, **f32),
        "logits": logits,
    }
    return {k: torch.nn.Parameter(v.to(**f32).contiguous().clone()) for k, v in tensors.items()}


def activated(params: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Rasterizer inputs: ``means`` [N, 3], ``quats`` [N, 4] (wxyz, normalised),
    ``scales`` [N, 3] (exp), ``opacities`` [N] (sigmoid)."""
    quats = torch.nn.functional.normalize(params["quats"], dim=-1)
    return params["means"], quats, torch.exp(params["scales"]), torch.sigmoid(params["opacities"])


def camera_centers(viewmats: Tensor) -> Tensor:
    """[C, 3] camera centres in world coordinates of world-to-camera ``viewmats`` [C, 4, 4]."""
    R, t = viewmats[:, :3, :3], viewmats[:, :3, 3]
    return -torch.einsum("cji,cj->ci", R, t)


def eval_sh_bases(num_bases: int, dirs: Tensor) -> Tensor:
    """Real SH basis [..., num_bases] at unit directions ``dirs`` [..., 3] (gsplat order/constants)."""
    from gsplat.cuda._torch_impl import _eval_sh_bases_fast  # lazy: gsplat.cuda prints warnings on CPU

    return _eval_sh_bases_fast(num_bases, dirs)


def sh_colors(params: dict[str, Tensor], viewmats: Tensor, sh_degree: int | None = None) -> Tensor:
    """View-dependent RGB [C, N, 3] from SH, using degrees ``0..sh_degree`` (default: all stored).

    Direction of Gaussian n seen from camera c: ``normalize(means[n] - centre[c])``.
    Output = ``clamp_min(sum_b basis_b * coeff_b + 0.5, 0)`` (gsplat's convention).
    """
    deg = sh_degree_of(params) if sh_degree is None else min(sh_degree, sh_degree_of(params))
    C = viewmats.shape[0]
    if deg == 0:
        rgb = SH_C0 * params["sh0"][:, 0, :]
        return torch.clamp_min(rgb + 0.5, 0.0)[None].expand(C, -1, -1)
    nb = num_sh_bases(deg)
    coeffs = torch.cat([params["sh0"], params["shN"][:, : nb - 1]], dim=1)  # [N, nb, 3]
    dirs = params["means"][None] - camera_centers(viewmats)[:, None]  # [C, N, 3]
    dirs = torch.nn.functional.normalize(dirs, dim=-1)
    bases = eval_sh_bases(nb, dirs)  # [C, N, nb]
    # broadcast-multiply and sum (not einsum/bmm: BLAS threading makes those gradients vary in
    # the last bit between runs on the CPU, which breaks bit-exact reproducibility)
    rgb = (bases[..., None] * coeffs[None]).sum(dim=-2)
    return torch.clamp_min(rgb + 0.5, 0.0)


def colors_and_logits(params: dict[str, Tensor], viewmats: Tensor, sh_degree: int | None = None) -> Tensor:
    """[C, N, 3 + K]: SH colour per camera followed by the class logits, for one rasterize call."""
    rgb = sh_colors(params, viewmats, sh_degree)
    logits = params["logits"][None].expand(rgb.shape[0], -1, -1)
    return torch.cat([rgb, logits], dim=-1)


def num_gaussians(params: dict[str, Tensor]) -> int:
    return int(params["means"].shape[0])


def detached(params: dict[str, Tensor]) -> dict[str, Tensor]:
    """Plain detached CPU copies of the scene tensors (for saving and comparing)."""
    return {k: v.detach().cpu().clone() for k, v in params.items()}


# ----------------------------------------------------------------------------------------------
# compact tensor file
# ----------------------------------------------------------------------------------------------


def save_tensors(path: str | os.PathLike, params: dict[str, Tensor], *, label_set: str = CANONICAL,
                 meta: dict[str, Any] | None = None) -> Path:
    """Write the scene as a ``torch.save`` dict loadable with ``weights_only=True`` (atomic write).

    Layout: ``{"format": "facegs.scene", "version": 1, "label_set": str, "sh_degree": int,
    "meta": {plain str/int/float/bool/list/dict}, "params": {name: float32 CPU tensor}}``.
    """

    blob = {
        "format": TENSOR_FORMAT,
        "version": TENSOR_FORMAT_VERSION,
        "label_set": label_set,
        "sh_degree": sh_degree_of(params),
        "meta": dict(meta or {}),
        "params": {k: params[k].detach().cpu().contiguous().clone() for k in SCENE_KEYS},
    }
    buf = io.BytesIO()
    torch.save(blob, buf)
    p = Path(path)
    atomic_write_bytes(p, buf.getvalue())
    return p


def load_tensors(path: str | os.PathLike, device: str | torch.device = "cpu",
                 requires_grad: bool = False) -> tuple[Params, dict[str, Any]]:
    """Read a file written by :func:`save_tensors` -> ``(params, info)``.

    ``info`` holds ``label_set``, ``sh_degree`` and ``meta``. Loads with ``weights_only=True``.
    """
    blob = torch.load(Path(path), map_location=device, weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != TENSOR_FORMAT:
        raise ValueError(f"{path}: not a facegs scene tensor file")
    if int(blob.get("version", -1)) > TENSOR_FORMAT_VERSION:
        raise ValueError(f"{path}: scene file version {blob['version']} is newer than supported")
    params = {k: torch.nn.Parameter(v, requires_grad=requires_grad) for k, v in blob["params"].items()}
    info = {"label_set": blob["label_set"], "sh_degree": int(blob["sh_degree"]), "meta": blob["meta"]}
    return params, info


# ----------------------------------------------------------------------------------------------
# PLY (original 3DGS layout + class logits)
# ----------------------------------------------------------------------------------------------


def ply_field_names(sh_degree: int, num_classes: int) -> list[str]:
    """Vertex properties in file order: the original 3DGS layout, then ``class_logit_*``."""
    n_rest = 3 * (num_sh_bases(sh_degree) - 1)
    return (
        ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
        + [f"f_rest_{i}" for i in range(n_rest)]
        + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
        + [f"class_logit_{i}" for i in range(num_classes)]
    )


def _ply_matrix(params: dict[str, Tensor]) -> np.ndarray:
    """[N, F] float32 rows in :func:`ply_field_names` order.

    ``f_rest`` is channel-major as in 3DGS (``shN.transpose(1, 2).flatten(1)``: all R
    coefficients, then G, then B); ``rot_*`` is (w, x, y, z); scale and opacity pre-activation.
    """
    t = {k: v.detach().cpu().float() for k, v in params.items()}
    n = t["means"].shape[0]
    cols = [
        t["means"],
        torch.zeros(n, 3),
        t["sh0"].reshape(n, 3),
        t["shN"].transpose(1, 2).reshape(n, -1),
        t["opacities"].reshape(n, 1),
        t["scales"],
        t["quats"],
        t["logits"],
    ]
    return torch.cat(cols, dim=1).numpy().astype("<f4", copy=False)


def ply_bytes(params: dict[str, Tensor], *, label_set: str = CANONICAL) -> bytes:
    """Binary little-endian PLY bytes of the scene (3DGS viewers ignore the extra properties)."""
    deg = sh_degree_of(params)
    k = params["logits"].shape[1]
    names = ply_field_names(deg, k)
    header = ["ply", "format binary_little_endian 1.0",
              f"comment {PLY_COMMENT_PREFIX} label_set {label_set}",
              f"comment {PLY_COMMENT_PREFIX} num_classes {k}",
              f"comment {PLY_COMMENT_PREFIX} sh_degree {deg}",
              f"element vertex {params['means'].shape[0]}"]
    header += [f"property float {n}" for n in names]
    header.append("end_header")
    data = _ply_matrix(params)
    assert data.shape[1] == len(names)
    return ("\n".join(header) + "\n").encode("ascii") + data.tobytes()


def save_ply(path: str | os.PathLike, params: dict[str, Tensor], *, label_set: str = CANONICAL) -> Path:
    """Write :func:`ply_bytes` atomically to ``path``."""
    p = Path(path)
    atomic_write_bytes(p, ply_bytes(params, label_set=label_set))
    return p


_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}


def _parse_ply_header(data: bytes) -> tuple[dict[str, str], int, np.dtype, int]:
    """-> (comments as {key: value}, vertex count, vertex dtype, offset of the binary body)."""
    end = data.find(b"end_header\n")
    if not data.startswith(b"ply") or end < 0:
        raise ValueError("not a PLY file (missing 'ply' magic or 'end_header')")
    lines = data[:end].decode("ascii").splitlines()
    comments: dict[str, str] = {}
    fields: list[tuple[str, str]] = []
    n_vertex, in_vertex, seen_vertex = None, False, False
    for ln in lines[1:]:
        tok = ln.split()
        if not tok:
            continue
        if tok[0] == "format" and tok[1] != "binary_little_endian":
            raise ValueError(f"only binary_little_endian PLY is supported, got {tok[1]}")
        elif tok[0] == "comment" and len(tok) >= 4 and tok[1] == PLY_COMMENT_PREFIX:
            comments[tok[2]] = " ".join(tok[3:])
        elif tok[0] == "element":
            if seen_vertex and in_vertex:
                in_vertex = False  # a later element follows the vertices: ignore it
            in_vertex = tok[1] == "vertex"
            if in_vertex:
                n_vertex, seen_vertex = int(tok[2]), True
            elif not seen_vertex:
                raise ValueError("PLY elements before 'vertex' are not supported")
        elif tok[0] == "property" and in_vertex:
            if tok[1] == "list":
                raise ValueError("list properties in the vertex element are not supported")
            fields.append((tok[2], "<" + _PLY_TYPES[tok[1]]))
    if n_vertex is None:
        raise ValueError("PLY has no vertex element")
    return comments, n_vertex, np.dtype(fields), end + len(b"end_header\n")


def load_ply(path: str | os.PathLike, device: str | torch.device = "cpu", requires_grad: bool = False,
             num_classes: int | None = None) -> tuple[Params, dict[str, Any]]:
    """Read a 3DGS PLY (ours or any standard one) -> ``(params, info)``.

    A file without ``class_logit_*`` (a plain 3DGS scene) gets zero logits for ``num_classes``
    classes (default: the label set's size). ``info``: ``label_set``, ``sh_degree``.
    """
    data = Path(path).read_bytes()
    comments, n, dtype, off = _parse_ply_header(data)
    v = np.frombuffer(data, dtype=dtype, count=n, offset=off)
    names = dtype.names

    def cols(fields: list[str]) -> Tensor:
        if not fields:
            return torch.zeros(n, 0)
        return torch.from_numpy(np.stack([v[f].astype(np.float32) for f in fields], axis=1).copy())

    n_rest = sum(1 for f in names if f.startswith("f_rest_"))
    if n_rest % 3:
        raise ValueError(f"{path}: {n_rest} f_rest properties is not a multiple of 3")
    label_set = comments.get("label_set", CANONICAL)
    n_cls = sum(1 for f in names if f.startswith("class_logit_"))
    if n_cls == 0:
        n_cls = num_classes if num_classes is not None else get_label_set(label_set).num_classes
        logits = torch.zeros(n, n_cls)
    else:
        logits = cols([f"class_logit_{i}" for i in range(n_cls)])
    shN = cols([f"f_rest_{i}" for i in range(n_rest)]).reshape(n, 3, n_rest // 3).transpose(1, 2)
    tensors = {
        "means": cols(["x", "y", "z"]),
        "scales": cols(["scale_0", "scale_1", "scale_2"]),
        "quats": cols(["rot_0", "rot_1", "rot_2", "rot_3"]),
        "opacities": cols(["opacity"])[:, 0],
        "sh0": cols(["f_dc_0", "f_dc_1", "f_dc_2"])[:, None, :],
        "shN": shN,
        "logits": logits,
    }
    params = {k: torch.nn.Parameter(t.contiguous().to(device), requires_grad=requires_grad)
              for k, t in tensors.items()}
    info = {"label_set": label_set, "sh_degree": sh_degree_of(params), "comments": comments}
    return params, info


def read_ply_header(path: str | os.PathLike) -> list[str]:
    """The header lines of a PLY file (up to and including ``end_header``), for inspection."""
    with open(path, "rb") as f:
        head = f.read(65536)
    end = head.find(b"end_header\n")
    return head[: end + len(b"end_header")].decode("ascii").splitlines()
