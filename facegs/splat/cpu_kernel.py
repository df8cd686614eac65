"""The fused CPU compositing kernel (C++, ``csrc/composite.cpp``): build, cache, load, autograd.

The same library holds the fused projection and tile intersection (``csrc/project.cpp``,
:mod:`facegs.splat.cpu_project`).

What it replaces: the tile loop of :mod:`facegs.splat.torch_backend` (dense per-tile alpha
matrices, cumulative products, many small tensor ops per tile). The kernel does the same
compositing with gsplat 1.5.3's rules per pixel, Gaussian-outer and pixel-inner so the compiler
vectorises over a tile's pixels, forward and backward, on ``torch.get_num_threads()`` threads
(tiles are independent; results do not depend on the thread count). Projection, tile
intersection, SH and the render modes stay in PyTorch, shared with the reference path, which is
what the kernel is tested against (tests/test_cpu_kernel.py).

Why a C++ extension JIT-built with ``torch.utils.cpp_extension`` (and not numba, or a wheel):

- the machines that run facegs already have what it needs: torch's headers come with torch, and
  the system C++ compiler (g++ on the project's Debian machines and CI) builds it; ``ninja`` is a
  pip dependency. ``make demo`` / ``make test`` stay the whole set-up, with no extra package of
  ~50 MB (numba + llvmlite) and no per-process JIT warm-up;
- it registers plain ``torch.ops`` (``TORCH_LIBRARY``, no pybind11), so it includes only ATen
  headers: the build takes ~20 CPU seconds once per machine (``torch/extension.h`` alone would
  add ~30); the cached library loads in milliseconds;
- tensors and threads are torch's own (``at::parallel_for``, so ``torch.set_num_threads`` and
  Ray actors' thread settings apply).

Build cache: ``$FACEGS_KERNEL_CACHE``, else ``$XDG_CACHE_HOME/facegs/kernels``, else
``~/.cache/facegs/kernels``; one shared library per hash of (source, flags, torch and Python
version, CPU architecture and its instruction-set flags, compiler), so a changed source or a
different machine sharing a home directory builds its own. Concurrent processes (Ray actors)
serialise on an ``flock`` (released by the OS if a builder dies) and build in a private folder
that is renamed into place when complete, so a killed build never leaves a half-written library.

If the kernel cannot be built or loaded (no compiler, read-only cache, ...), facegs warns once
and uses the pure-PyTorch path. ``FACEGS_CPU_KERNEL=0`` turns the kernel off (no warning).
Float32 only (float64 inputs use the torch path).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import platform
import shutil
import sys
import warnings
from pathlib import Path

import torch
from torch import Tensor
from torch.utils import cpp_extension

SOURCES = (Path(__file__).parent / "csrc" / "composite.cpp", Path(__file__).parent / "csrc" / "project.cpp")
OP_NAMESPACE = "facegs_splat"
_STATE: dict[str, object] = {}  # "lib": path of the loaded library, or "error": why it is unavailable


def _cflags() -> list[str]:
    # -fopenmp: at::parallel_for is inline OpenMP (ATen's parallel backend); without it the
    # extension's loops run on one thread whatever torch.set_num_threads says. The library links
    # libgomp.so.1, the soname torch already loaded, so the process keeps one OpenMP runtime.
    flags = ["-O3", "-DNDEBUG", "-fopenmp", "-ffp-contract=fast", "-Wno-psabi"]
    if sys.platform.startswith("linux") and platform.machine() in ("x86_64", "aarch64"):
        flags.append("-march=native")  # built on the machine that runs it (the hash covers the CPU)
    return flags


def _cpu_signature() -> str:
    """The CPU's instruction-set flags (Linux ``/proc/cpuinfo``), for the build hash."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def cache_dir() -> Path:
    """Folder of the built kernels (see the module docstring)."""
    if os.environ.get("FACEGS_KERNEL_CACHE"):
        return Path(os.environ["FACEGS_KERNEL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "facegs" / "kernels"


def build_name() -> str:
    """``facegs_splat_<hash>``: the library's name, a hash of everything the binary depends on."""
    h = hashlib.sha256(b"".join(src.read_bytes() for src in SOURCES))
    for part in (*_cflags(), torch.__version__, sys.version, platform.machine(), _cpu_signature(),
                 os.environ.get("CXX", "c++")):  # fmt: skip
        h.update(part.encode() + b"\0")
    return f"{OP_NAMESPACE}_{h.hexdigest()[:16]}"


def _build(name: str, final: Path) -> None:
    """Compile into a private folder and move the library to ``final`` (caller holds the lock)."""
    root = final.parent
    for stale in root.glob(f"{name}.build-*"):  # left by a killed builder (we hold the lock)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f"{name}.build-{os.getpid()}"
    tmp.mkdir(parents=True)
    path = os.environ.get("PATH", "")
    try:  # ninja (a pip dependency) next to the interpreter, also when the venv is not activated
        os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), path])
        lib = cpp_extension.load(name, [str(src) for src in SOURCES], extra_cflags=_cflags(), extra_ldflags=["-fopenmp"],
                                 build_directory=str(tmp),
                                 is_python_module=False, verbose=False)  # fmt: skip
        os.replace(lib, final)
    finally:
        os.environ["PATH"] = path
        shutil.rmtree(tmp, ignore_errors=True)


def load() -> str:
    """Build (once per machine) and load the kernel; returns the library path. Raises on failure."""
    if "lib" in _STATE:
        return str(_STATE["lib"])
    name = build_name()
    root = cache_dir()
    final = root / f"{name}.so"
    if not final.is_file():
        root.mkdir(parents=True, exist_ok=True)
        with open(root / f"{name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building it right now
            if not final.is_file():
                _build(name, final)
            else:
                torch.ops.load_library(str(final))
    else:
        torch.ops.load_library(str(final))
    ops = getattr(torch.ops, OP_NAMESPACE, None)
    if ops is None or not all(hasattr(ops, op) for op in ("composite_forward", "project_forward", "isect_tiles")):
        raise RuntimeError(f"{final} does not register torch.ops.{OP_NAMESPACE}")
    _STATE["lib"] = str(final)
    return str(final)


def available() -> bool:
    """True when the kernel is loaded (building it on first use); warns once if it cannot be."""
    if "lib" in _STATE:
        return True
    if "error" in _STATE:
        return False
    if os.environ.get("FACEGS_CPU_KERNEL", "1").strip().lower() in ("0", "off", "false", "no"):
        _STATE["error"] = "turned off by FACEGS_CPU_KERNEL"
        return False
    try:
        load()
        return True
    except Exception as e:  # any build or load failure: fall back, loudly once
        _STATE["error"] = f"{type(e).__name__}: {str(e).strip()[-600:]}"
        warnings.warn(
            f"facegs: the fused CPU rasterizer kernel could not be built or loaded ({_STATE['error']}); "
            "using the pure-PyTorch rasterizer instead (several times slower). It needs a C++ compiler "
            "(g++) and a writable cache folder (FACEGS_KERNEL_CACHE); FACEGS_CPU_KERNEL=0 silences this.",
            RuntimeWarning, stacklevel=2,
        )  # fmt: skip
        return False


def unavailable_reason() -> str | None:
    """Why :func:`available` returned False (None if it did not, or was not asked yet)."""
    return None if "error" not in _STATE else str(_STATE["error"])


class _FusedComposite(torch.autograd.Function):
    """acc [I, H, W, D] (sum of weights x colours), T [I, H, W] (final transmittance) of all tiles."""

    @staticmethod
    def forward(ctx, means2d, conics, opacities, colors, flatten_ids, isect_offsets, width, height, tile_size,
                geo_channels):
        ops = getattr(torch.ops, OP_NAMESPACE)
        acc, T, last = ops.composite_forward(means2d, conics, opacities, colors, flatten_ids, isect_offsets,
                                             width, height, tile_size)  # fmt: skip
        ctx.save_for_backward(means2d, conics, opacities, colors, flatten_ids, isect_offsets, acc, T, last)
        ctx.dims = (width, height, tile_size)
        ctx.geo_channels = geo_channels
        return acc, T

    @staticmethod
    def backward(ctx, g_acc: Tensor | None, g_T: Tensor | None):
        means2d, conics, opacities, colors, fid, offsets, acc, T, last = ctx.saved_tensors
        g_acc = torch.zeros_like(acc) if g_acc is None else g_acc.contiguous()
        g_T = torch.zeros_like(T) if g_T is None else g_T.contiguous()
        ops = getattr(torch.ops, OP_NAMESPACE)
        v_m, v_c, v_o, v_col = ops.composite_backward(means2d, conics, opacities, colors, fid, offsets, *ctx.dims,
                                                      acc, T, last, g_acc, g_T, ctx.geo_channels)  # fmt: skip
        return v_m, v_c, v_o, v_col, None, None, None, None, None, None


def rasterize_to_pixels_fused(
    means2d: Tensor,
    conics: Tensor,
    colors: Tensor,
    opacities: Tensor,
    width: int,
    height: int,
    tile_size: int,
    isect_offsets: Tensor,
    flatten_ids: Tensor,
    backgrounds: Tensor | None = None,
    geo_channels: int | None = None,
) -> tuple[Tensor, Tensor]:
    """:func:`facegs.splat.torch_backend.rasterize_to_pixels` on the fused kernel (float32, CPU).

    Args: means2d [I, N, 2], conics [I, N, 3], colors [I, N, D], opacities [I, N], isect_offsets
    [I, tile_height, tile_width] int32, flatten_ids [M] int32, backgrounds [I, D] or None.
    ``geo_channels``: only the first this many colour channels (and the alphas) send gradient to
    the geometry (means2d, conics, opacities); the others reach their colours only (None: all).
    Returns colors [I, H, W, D] and alphas [I, H, W, 1], differentiable like the torch path.
    """
    D = colors.shape[-1]
    n_geo = D if geo_channels is None else int(geo_channels)
    if not 0 <= n_geo <= D:
        raise ValueError(f"geo_channels must be in [0, {D}], got {geo_channels}")
    acc, T = _FusedComposite.apply(
        means2d.float().contiguous(), conics.float().contiguous(), opacities.float().contiguous(),
        colors.float().contiguous(), flatten_ids.to(torch.int32).contiguous(),
        isect_offsets.to(torch.int32).contiguous(), int(width), int(height), int(tile_size), n_geo,
    )  # fmt: skip
    T = T[..., None]
    if backgrounds is None:
        return acc, 1.0 - T
    bg = backgrounds[:, None, None, :]
    if n_geo == D:
        return acc + T * bg, 1.0 - T
    # the background of the other channels is composited with a detached T (no geometry gradient)
    T_bg = torch.cat([T.expand(-1, -1, -1, n_geo), T.detach().expand(-1, -1, -1, D - n_geo)], dim=-1)
    return acc + T_bg * bg, 1.0 - T
