"""The fused CPU compositing kernel (facegs.splat.cpu_kernel) against the pure-PyTorch reference path.

Tolerances (float32 both; the reference is ``backend="torch"``, itself tested against a float64
brute-force rasterizer in tests/test_render.py):

- images and alphas: max abs error <= 1e-5 (measured ~6e-7 on these scenes; depth channels, ~2-4
  units, at 1e-5 x their scale);
- gradients: max abs error per parameter <= 1e-4 x the max abs reference gradient of that
  parameter (measured 2e-7 .. 4e-6; both compose the same rules in a different order: the kernel
  evaluates ``sigma`` around each pixel, the reference a quadratic around the tile centre).

A threshold tie (``opacity exp(-sigma)`` within float rounding of 1/255, or T of 1e-4) can flip
one pixel-Gaussian decision between any two float implementations and move that pixel by up to
~1/255; the seeds here have none (checked: errors stay at 1e-6).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from test_render import make_scene

from facegs.splat import cpu_kernel, cpu_project
from facegs.splat.projection import project_gaussians
from facegs.splat.rasterize import rasterize, resolve_backend
from facegs.splat.tiles import isect_offset_encode, isect_tiles, tile_grid

REPO = Path(__file__).resolve().parents[1]
PARAMS = ("means", "quats", "scales", "opacities", "colors")
IMG_TOL = 1e-5
GRAD_REL_TOL = 1e-4

pytestmark = pytest.mark.skipif(not cpu_kernel.available(), reason=f"kernel unavailable: {cpu_kernel.unavailable_reason()}")


def random_scene(n: int, channels: int, n_cameras: int = 2, seed: int = 0, width: int = 61, height: int = 47,
                 opaque: bool = False) -> dict[str, torch.Tensor]:
    """N random Gaussians in a unit ball 3 units in front of ``n_cameras`` cameras around it (float32).

    Sizes are log-normal so that small splats (a few pixels) and large ones (a quarter of the
    image) mix, the image size is not a multiple of the tile, and a few Gaussians sit behind the
    cameras' near plane or outside the field of view.
    """
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g) * 0.5
    scales = torch.exp(torch.randn(n, 3, generator=g) * 0.6 - 2.6)
    opac = torch.rand(n, generator=g) * (0.05 if opaque else 0.9) + (0.95 if opaque else 0.05)
    if opaque:
        opac[::5] = 1.0  # alpha clamps at 0.999; many layers reach the early stop
    f = 0.5 * width / math.tan(math.radians(40) / 2)
    vms = []
    for c in range(n_cameras):
        a = 0.6 * c - 0.3
        vm = torch.eye(4)
        vm[:3, :3] = torch.tensor([[math.cos(a), 0, -math.sin(a)], [0, 1, 0], [math.sin(a), 0, math.cos(a)]])
        vm[2, 3] = 3.0
        vms.append(vm)
    K = torch.tensor([[f, 0, width / 2 + 0.7], [0, f * 1.05, height / 2 - 0.3], [0, 0, 1.0]])
    return dict(means=means, quats=torch.randn(n, 4, generator=g), scales=scales, opacities=opac,
                colors=torch.rand(n, channels, generator=g) * 2 - 0.5, viewmats=torch.stack(vms),
                Ks=K.expand(n_cameras, 3, 3).clone(), backgrounds=torch.rand(n_cameras, channels, generator=g))  # fmt: skip


def render(scene: dict, backend: str, width: int, height: int, grads: bool = True, **kw):
    """(colors, alphas, grads dict incl. means2d, meta) of a random linear loss on one backend."""
    p = {k: v.clone().requires_grad_(grads and k not in ("viewmats", "Ks")) for k, v in scene.items()}
    colors, alphas, meta = rasterize(**p, width=width, height=height, backend=backend, **kw)
    out = {}
    if grads:
        meta["means2d"].retain_grad()
        g = torch.Generator().manual_seed(123)
        wc, wa = torch.randn(colors.shape, generator=g), torch.randn(alphas.shape, generator=g)
        ((colors * wc).sum() + (alphas * wa).sum()).backward()
        out = {k: p[k].grad for k in p if p[k].grad is not None}
        out["means2d"] = meta["means2d"].grad
    return colors.detach(), alphas.detach(), out, meta


def assert_close(got, ref, img_scale: float = 1.0, mask=None):
    (c, a, g, meta), (cr, ar, gr, meta_r) = got, ref
    assert meta["backend"] == "cpu" and meta_r["backend"] == "torch"
    assert c.shape == cr.shape and a.shape == ar.shape
    err = (c - cr).abs() if mask is None else (c - cr).abs()[mask]
    assert err.max() <= IMG_TOL * img_scale, f"image error {err.max():.3g}"
    assert (a - ar).abs().max() <= IMG_TOL, f"alpha error {(a - ar).abs().max():.3g}"
    assert g.keys() == gr.keys()
    for k in gr:
        scale = gr[k].abs().max().item()
        assert scale > 0, f"{k}: reference gradient is all zero"
        e = (g[k] - gr[k]).abs().max().item()
        assert e <= GRAD_REL_TOL * scale, f"{k}: gradient error {e:.3g} > {GRAD_REL_TOL} x {scale:.3g}"


@pytest.mark.parametrize("channels", [3, 22, 41])
@pytest.mark.parametrize("tile_size", [8, 16])
@pytest.mark.parametrize("with_bg", [True, False])
def test_matches_torch_path_rgb(channels, tile_size, with_bg):
    scene = random_scene(400, channels, seed=channels + tile_size)
    if not with_bg:
        scene.pop("backgrounds")
    got = render(scene, "cpu", 61, 47, tile_size=tile_size)
    ref = render(scene, "torch", 61, 47, tile_size=tile_size)
    assert ref[1].max() > 0.9 and ref[1].min() < 0.1  # both covered and empty pixels
    assert_close(got, ref)


@pytest.mark.parametrize("mode", ["D", "ED", "RGB+D", "RGB+ED"])
def test_matches_torch_path_depth_modes(mode):
    scene = random_scene(300, 3, seed=5)
    got, ref = (render(scene, b, 61, 47, render_mode=mode) for b in ("cpu", "torch"))
    mask = (ref[1] > 1e-2).expand_as(ref[0]) if mode.endswith("ED") else None  # ED is ill-posed at alpha ~ 0
    assert_close(got, ref, img_scale=4.0, mask=mask)


def test_matches_torch_path_opaque_layers_early_stop_and_clamp():
    scene = random_scene(500, 22, seed=9, opaque=True)
    got, ref = (render(scene, b, 61, 47) for b in ("cpu", "torch"))
    assert ref[1].max() > 0.9998  # the early stop (T <= 1e-4) was reached
    assert_close(got, ref)


def test_matches_torch_path_on_the_render_test_scenes():
    """tests/test_render.py's hand-made hard cases: Gaussians on tile corners, crossing the near
    plane, outside the field of view, and opaque (alpha clamped at 0.999) in front."""
    for kw in (dict(seed=0, channels=5), dict(seed=5, n=60, opaque=True, channels=22)):
        scene = make_scene(**kw)
        got, ref = (render(scene, b, 24, 20, near_plane=1.2) for b in ("cpu", "torch"))
        assert_close(got, ref)


@pytest.mark.parametrize("n_geo", [0, 3, 22])
def test_geometry_grad_channels_matches_the_emulation(n_geo):
    """Native stop-gradient of channels >= n (cpu) against the values + carriers emulation (torch)."""
    scene = random_scene(400, 22, seed=2)
    got, ref = (render(scene, b, 61, 47, geometry_grad_channels=n_geo) for b in ("cpu", "torch"))
    assert_close(got, ref)
    full = render(scene, "torch", 61, 47)
    if n_geo < 22:  # the label channels' geometry gradient is really gone, their colour gradient is not
        assert (got[2]["means"] - full[2]["means"]).abs().max() > 1e-3 * full[2]["means"].abs().max()
        scale = full[2]["colors"].abs().max()
        assert (got[2]["colors"] - full[2]["colors"]).abs().max() <= GRAD_REL_TOL * scale


def test_fused_projection_matches_torch_projection():
    """csrc/project.cpp against facegs.splat.projection (the gsplat-checked torch rules): values,
    radii, and the gradients of a random linear loss, on the hard cases of test_render (near plane,
    outside the field of view: the Jacobian clamp) and a random multi-camera scene."""
    for scene, w, h, near in ((make_scene(n=60, seed=3), 24, 20, 1.2), (random_scene(800, 3, n_cameras=3, seed=8), 61, 47, 0.01)):
        outs = []
        for fn in (project_gaussians, cpu_project.project_gaussians_fused):
            p = {k: scene[k].clone().requires_grad_(k in ("means", "quats", "scales")) for k in
                 ("means", "quats", "scales", "opacities", "viewmats", "Ks")}  # fmt: skip
            proj = fn(p["means"], p["quats"], p["scales"], p["opacities"], p["viewmats"], p["Ks"], w, h, near_plane=near)
            g = torch.Generator().manual_seed(1)
            loss = sum((t * torch.randn(t.shape, generator=g)).sum() for t in (proj.means2d, proj.depths, proj.conics))
            loss.backward()
            outs.append((proj, {k: p[k].grad for k in ("means", "quats", "scales")}))
        (ref, gref), (got, ggot) = outs
        assert (got.radii == ref.radii).all(-1).float().mean() >= 0.999
        same = (got.radii == ref.radii).all(-1)
        assert same.sum() > 0.5 * same.numel() and ((ref.radii > 0).all(-1) & same).any()
        for a, b in ((got.means2d, ref.means2d), (got.conics, ref.conics), (got.depths, ref.depths)):
            assert ((a - b).abs()[same] <= 1e-5 * (1 + b.abs()[same])).all()
        for k in gref:
            assert (ggot[k] - gref[k]).abs().max() <= GRAD_REL_TOL * gref[k].abs().max(), k


def test_fused_tile_intersection_is_identical():
    scene = random_scene(2000, 3, n_cameras=2, seed=6)
    proj = project_gaussians(*(scene[k] for k in ("means", "quats", "scales", "opacities", "viewmats", "Ks")), 61, 47)
    for ts in (4, 8, 16):
        tw, th = tile_grid(61, 47, ts)
        ref = isect_tiles(proj.means2d, proj.radii, proj.depths, ts, tw, th)
        ref = (*ref, isect_offset_encode(ref[1], 2, tw, th))
        got = cpu_project.isect_tiles_fused(proj.means2d, proj.radii, proj.depths, ts, tw, th)
        assert all(torch.equal(a, b) for a, b in zip(got, ref)), ts
        assert got[2].numel() > 1000


def test_camera_gradients_use_the_torch_projection():
    scene = random_scene(200, 3, n_cameras=1, seed=3)
    p = {k: v.clone().requires_grad_(k in ("means", "viewmats")) for k, v in scene.items()}
    colors, alphas, meta = rasterize(**p, width=61, height=47, backend="cpu")
    colors.sum().backward()
    assert meta["backend"] == "cpu" and p["viewmats"].grad is not None and p["viewmats"].grad.abs().sum() > 0


def test_empty_scene_and_everything_culled():
    scene = random_scene(50, 4, seed=1)
    scene["means"] = scene["means"] + torch.tensor([0.0, 0.0, -10.0])  # all behind the cameras
    c, a, g, meta = render(scene, "cpu", 33, 17)
    assert meta["flatten_ids"].numel() == 0
    assert torch.equal(a, torch.zeros_like(a))
    assert torch.allclose(c, scene["backgrounds"][:, None, None, :].expand_as(c))
    assert torch.equal(g["means"], torch.zeros_like(g["means"]))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads ELF and /proc/self/maps")
def test_kernel_is_built_with_openmp_and_shares_torchs_runtime():
    """``at::parallel_for`` is inline OpenMP: a library built without ``-fopenmp`` runs every loop on
    one thread whatever ``torch.set_num_threads`` says (measured 0.98x on 2 quiet threads before the
    fix, 1.81x after). The library must link libgomp, and the process must hold one OpenMP runtime
    (torch's), not a second pool of spinning threads."""
    lib = cpu_kernel.load()
    out = subprocess.run(["readelf", "-d", lib], capture_output=True, text=True, check=True).stdout
    assert "libgomp" in out, "kernel not linked with OpenMP: its parallel loops would run serially"
    maps = Path("/proc/self/maps").read_text().splitlines()
    gomp = {line.split()[-1] for line in maps if "libgomp" in line}
    assert len(gomp) == 1, gomp


def test_kernel_is_deterministic_and_independent_of_thread_count():
    """The kernel's outputs and gradients are bitwise the same on 1 and 2 threads and across runs
    (tiles are independent; per-Gaussian sums run in intersection order). The torch projection
    in front of it is deterministic for a given thread count (its reductions are not the same
    on 1 and 2 threads), so a full render is compared at a fixed count."""
    scene = random_scene(3000, 41, n_cameras=3, seed=4)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        renders = [render(scene, "cpu", 61, 47) for _ in range(2)]
        _, _, _, meta = renders[0]
        args = [meta[k].detach().contiguous() for k in ("means2d", "conics", "opacities")]
        args += [torch.rand(3, 3000, 41, generator=torch.Generator().manual_seed(0)), meta["flatten_ids"],
                 meta["isect_offsets"], 61, 47, meta["tile_size"]]  # fmt: skip
        ops = getattr(torch.ops, cpu_kernel.OP_NAMESPACE)
        outs = []
        for threads in (1, 2, 1, 2):
            torch.set_num_threads(threads)
            acc, T, last = ops.composite_forward(*args)
            grads = ops.composite_backward(*args, acc, T, last, acc.cos(), T.sin(), 41)
            outs.append((acc, T, last, *grads))
    finally:
        torch.set_num_threads(n)
    for o in outs[1:]:
        assert all(torch.equal(x, y) for x, y in zip(o, outs[0]))
    (c0, a0, g0, _), (c1, a1, g1, _) = renders
    assert torch.equal(c0, c1) and torch.equal(a0, a1) and all(torch.equal(g0[k], g1[k]) for k in g0)


def test_auto_backend_picks_the_kernel_for_float32_cpu():
    assert resolve_backend("auto", torch.zeros(2, 3)) == "cpu"
    assert resolve_backend("auto", torch.zeros(2, 3, dtype=torch.float64)) == "torch"
    with pytest.raises(ValueError, match="float32"):
        resolve_backend("cpu", torch.zeros(2, 3, dtype=torch.float64))


def _run(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO), **env},
                          capture_output=True, text=True, timeout=300)  # fmt: skip


RENDER_TWICE = """
import warnings, torch
warnings.simplefilter("always")
from facegs.splat.rasterize import rasterize
scene = dict(means=torch.randn(30, 3) * 0.3, quats=torch.randn(30, 4), scales=torch.full((30, 3), 0.1),
             opacities=torch.full((30,), 0.5), colors=torch.rand(30, 3), viewmats=torch.eye(4)[None].clone(),
             Ks=torch.tensor([[[20.0, 0, 16], [0, 20.0, 16], [0, 0, 1]]]))
scene["viewmats"][0, 2, 3] = 3.0
for _ in range(2):
    c, a, meta = rasterize(**scene, width=32, height=32)
print("BACKEND", meta["backend"], float(a.max()) > 0.1)
"""


def test_falls_back_to_torch_with_one_warning_when_the_kernel_cannot_build(tmp_path):
    r = _run(RENDER_TWICE, {"FACEGS_KERNEL_CACHE": str(tmp_path / "cache"), "CXX": str(tmp_path / "no-such-c++")})
    assert r.returncode == 0, r.stderr
    assert "BACKEND torch True" in r.stdout
    assert r.stderr.count("fused CPU rasterizer kernel could not be built") == 1, r.stderr
    assert not list((tmp_path / "cache").glob("*.so"))


def test_switched_off_by_environment_without_warning(tmp_path):
    r = _run(RENDER_TWICE, {"FACEGS_CPU_KERNEL": "0", "FACEGS_KERNEL_CACHE": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert "BACKEND torch True" in r.stdout and "could not be built" not in r.stderr


@pytest.mark.slow
def test_concurrent_first_builds_share_one_cached_library(tmp_path):
    """Two processes building into an empty cache at once (Ray actors on a fresh machine): both
    get the kernel, one library is left, no build folder; a third process only loads it."""
    env = {"FACEGS_KERNEL_CACHE": str(tmp_path)}
    cmd = [sys.executable, "-c", RENDER_TWICE]
    procs = [subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(REPO), **env}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]  # fmt: skip
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0 and "BACKEND cpu True" in out, err
    libs = list(tmp_path.glob("*.so"))
    assert len(libs) == 1 and not list(tmp_path.glob("*.build-*"))
    mtime = libs[0].stat().st_mtime_ns
    r = _run(RENDER_TWICE, env)
    assert "BACKEND cpu True" in r.stdout and libs[0].stat().st_mtime_ns == mtime


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("channels", [3, 22])
def test_matches_gsplat_cuda(channels):
    """The fused CPU kernel against gsplat's CUDA kernels (tolerances of test_render's gsplat test:
    gsplat uses __expf and float atomics): images 1e-4, gradients 2e-3 x max, radii >= 99 % equal."""
    scene = make_scene(n=300, channels=channels, seed=channels, width=64, height=48)
    out = {}
    for backend, dev in (("gsplat", "cuda"), ("cpu", "cpu")):
        p = {k: v.to(dev).clone().requires_grad_(k in PARAMS or k == "backgrounds") for k, v in scene.items()}
        colors, alphas, meta = rasterize(**p, width=64, height=48, backend=backend)
        meta["means2d"].retain_grad()
        g = torch.Generator().manual_seed(0)
        wc, wa = torch.randn(colors.shape, generator=g).to(dev), torch.randn(alphas.shape, generator=g).to(dev)
        ((colors * wc).sum() + (alphas * wa).sum()).backward()
        grads = {k: p[k].grad.cpu() for k in PARAMS + ("backgrounds",)}
        grads["means2d"] = meta["means2d"].grad.cpu()
        out[backend] = (colors.detach().cpu(), alphas.detach().cpu(), meta["radii"].cpu(), grads)
    (cg, ag, rg, gg), (cc, ac, rc, gc) = out["gsplat"], out["cpu"]
    assert (rg == rc).all(-1).float().mean() >= 0.99
    assert (cc - cg).abs().max() <= 1e-4 and (ac - ag).abs().max() <= 1e-4
    for k, ref in gg.items():
        visible = (rg > 0).all(-1) if k == "means2d" else slice(None)
        assert (gc[k][visible] - ref[visible]).abs().max() <= 2e-3 * ref[visible].abs().max(), k


def test_the_cpp_source_ships_in_the_wheel(tmp_path):
    """hatch packs facegs/splat/csrc/composite.cpp (the kernel is built from it on the user's machine)."""
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                        "-w", str(tmp_path), str(REPO)], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    (wheel,) = tmp_path.glob("facegs-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    assert "facegs/splat/csrc/composite.cpp" in names and "facegs/splat/cpu_kernel.py" in names
