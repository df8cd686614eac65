"""facegs.render: the torch rasterizer against a brute-force float64 reference and gsplat.

Tolerances, and the errors measured when they were set (float32 torch backend vs the float64
reference on 24 x 20 px, 2 cameras, 48-60 Gaussians):

- images and alphas: max abs error <= 1e-4 (measured ~1e-6; values are O(1); depth channels,
  ~2 units, are compared at 3e-4);
- gradients: max abs error per parameter <= 1e-3 x max abs reference gradient of that parameter
  (measured 1e-6 .. 1e-5: float32 rounding in the cumulative transmittance and in the per-tile
  quadratic evaluation of sigma, amplified by 1 / (1 - alpha) <= 1000 for opaque layers; a wrong
  rule is off by O(1e-2 .. 1), see the early-stop and clamp cases);
- float64 torch backend vs float64 reference: 1e-9 relative (measured ~3e-15);
- tile size 16 vs 8 vs 4: float64 within 1e-10 (measured ~6e-15), float32 within 1e-5 (measured
  3e-6: the tile only moves the point about which the quadratic exponent is expanded, and float32
  rounding of that expansion is ~1e-6 of alpha).
"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from facegs.splat.projection import project_gaussians
from facegs.splat.rasterize import rasterize, resolve_backend
from facegs.splat.reference import reference_rasterize
from facegs.splat.sh import spherical_harmonics
from facegs.splat.tiles import isect_offset_encode, isect_tiles, tile_grid
from facegs.splat.torch_backend import rasterize_to_pixels

W, H = 24, 20
IMG_TOL = 1e-4
GRAD_REL_TOL = 1e-3
PARAMS = ("means", "quats", "scales", "opacities", "colors")


def make_scene(
    n: int = 48,
    n_cameras: int = 2,
    channels: int = 5,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    opaque: bool = False,
    width: int = W,
    height: int = H,
) -> dict[str, torch.Tensor]:
    """Random Gaussians in front of two cameras 2 units away, with deliberate hard cases:

    - random Gaussians in a unit-ish ball (many overlapping layers, some off-screen);
    - 8 Gaussians centred on rays through tile corners (pixel 8 and 16 boundaries) and one
      through a pixel centre;
    - 4 large Gaussians whose centre is just in front of the near plane used in the tests
      (``near_plane=1.2``), so their 3D extent crosses it, and 4 just behind it (culled);
    - 2 Gaussians far outside the field of view but large enough to reach into the image
      (exercise the Jacobian's field-of-view clamp).
    """
    g = torch.Generator().manual_seed(seed)
    f64 = dict(generator=g, dtype=torch.float64)
    means = torch.randn(n, 3, **f64) * torch.tensor([0.6, 0.5, 0.5], dtype=torch.float64)
    scales = torch.exp(torch.randn(n, 3, **f64) * 0.5 - 2.3)
    f = 0.5 * width / math.tan(math.radians(50) / 2)
    corners = torch.tensor([[8, 8], [16, 8], [8, 16], [16, 16], [0, 8], [16, 0], [8.5, 12.5], [12, 16.5]])
    depth = 2.0 + 0.3 * torch.rand(len(corners), **f64)
    if opaque:  # an opacity-1 Gaussian in front, centred on a pixel centre: alpha clamps at 0.999
        depth[6] = 1.0
    xy = (corners.double() - torch.tensor([width / 2, height / 2])) / f * depth[:, None]
    means[:8] = torch.cat([xy, depth[:, None] - 2.0], dim=1)  # camera 0 sits at z = -2
    means[8:12] = torch.tensor(
        [[0.1, 0.0, -0.75], [-0.2, 0.1, -0.7], [0.0, -0.15, -0.78], [0.15, 0.15, -0.72]]
    )
    scales[8:12] = 0.15
    means[12:16] = torch.tensor(
        [[0.0, 0.0, -0.85], [0.1, 0.1, -0.9], [-0.1, 0.0, -0.82], [0.05, -0.1, -0.95]]
    )
    means[16:18] = torch.tensor([[1.6, 0.0, 0.0], [0.0, -1.5, 0.1]])
    scales[16:18] = 0.5
    quats = torch.randn(n, 4, **f64)
    opac = torch.rand(n, **f64) * 0.9 + 0.05
    if opaque:
        opac = 0.97 + 0.029 * torch.rand(n, **f64)
        opac[::4] = 1.0
        opac[6] = 1.0
        scales = scales * 3.0
    cams = []
    for c in range(n_cameras):
        a = 0.35 * c
        ca, sa = math.cos(a), math.sin(a)
        R = torch.tensor([[ca, 0, -sa], [0, 1, 0], [sa, 0, ca]], dtype=torch.float64)
        vm = torch.eye(4, dtype=torch.float64)
        vm[:3, :3] = R
        vm[:3, 3] = torch.tensor([0.0, 0.0, 2.0], dtype=torch.float64)
        cams.append(vm)
    Ks = torch.tensor([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]], dtype=torch.float64)
    scene = dict(
        means=means,
        quats=quats,
        scales=scales,
        opacities=opac,
        colors=torch.rand(n, channels, **f64),
        viewmats=torch.stack(cams),
        Ks=Ks.expand(n_cameras, 3, 3).clone(),
        backgrounds=torch.rand(n_cameras, channels, **f64),
    )
    return {k: v.to(dtype) for k, v in scene.items()}


def render_both(scene, *, with_bg=True, grads=False, dtype=torch.float32, weights_seed=1, **kw):
    """Render with the torch backend (scene cast to dtype) and the float64 reference.

    With ``grads``, backpropagates the same random linear loss through both and returns the
    gradients of the Gaussian parameters (and of the backgrounds).
    """
    outs = []
    for fn, dt in ((_torch_render, dtype), (_reference_render, torch.float64)):
        p = {
            k: v.to(dt).clone().requires_grad_(grads and k not in ("viewmats", "Ks"))
            for k, v in scene.items()
        }
        if not with_bg:
            p["backgrounds"] = None
        colors, alphas = fn(p, **kw)
        out = {"colors": colors.double(), "alphas": alphas.double()}
        if grads:
            g = torch.Generator().manual_seed(weights_seed)
            wc = torch.randn(colors.shape, generator=g, dtype=torch.float64).to(dt)
            wa = torch.randn(alphas.shape, generator=g, dtype=torch.float64).to(dt)
            ((colors * wc).sum() + (alphas * wa).sum()).backward()
            keys = PARAMS + (("backgrounds",) if with_bg else ())
            out["grads"] = {k: p[k].grad.double() for k in keys if p[k].grad is not None}
        outs.append(out)
    return outs


def _torch_render(p, **kw):
    colors, alphas, _ = rasterize(**p, width=W, height=H, backend="torch", **kw)
    return colors, alphas


def _reference_render(p, **kw):
    kw.pop("tile_size", None)
    return reference_rasterize(**p, width=W, height=H, **kw)


def assert_grads_close(got: dict, ref: dict, rel: float) -> None:
    assert got.keys() == ref.keys()
    for k in ref:
        scale = ref[k].abs().max().item()
        err = (got[k] - ref[k]).abs().max().item()
        assert scale > 0, f"{k}: reference gradient is all zero"
        assert err <= rel * scale, f"{k}: max abs grad error {err:.3g} > {rel:g} x {scale:.3g}"


# ------------------------------------------------------------------------------------------
# Forward
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [5, 22])
@pytest.mark.parametrize("with_bg", [False, True])
def test_torch_matches_reference(channels, with_bg):
    scene = make_scene(channels=channels, seed=channels)
    got, ref = render_both(scene, with_bg=with_bg, near_plane=1.2)
    assert got["colors"].shape == (2, H, W, channels) and got["alphas"].shape == (2, H, W, 1)
    assert (got["colors"] - ref["colors"]).abs().max() <= IMG_TOL
    assert (got["alphas"] - ref["alphas"]).abs().max() <= IMG_TOL
    assert ref["alphas"].max() > 0.5  # the scene is not empty


def test_near_plane_culls_gaussians_behind_it():
    scene = make_scene()
    proj = project_gaussians(
        scene["means"], scene["quats"], scene["scales"], scene["opacities"], scene["viewmats"], scene["Ks"],
        W, H, near_plane=1.2,
    )  # fmt: skip
    visible = (proj.radii > 0).all(-1)
    assert not visible[0, 12:16].any()  # z < 1.2 in camera 0
    assert visible[0, 8:12].all()  # centres just in front, 3D extent crosses the near plane
    assert visible[0, 16:18].any()  # outside the field of view but reaching into the image
    assert proj.radii.dtype == torch.int32 and proj.radii.shape == (2, 48, 2)
    assert (proj.means2d[~visible] == 0).all() and (proj.conics[~visible] == 0).all()


@pytest.mark.parametrize("mode", ["D", "ED", "RGB+D", "RGB+ED"])
def test_depth_modes_match_reference(mode):
    scene = make_scene(seed=3)
    got, ref = render_both(scene, render_mode=mode)
    channels = 1 if mode in ("D", "ED") else 6
    assert got["colors"].shape == (2, H, W, channels)
    depth_scale = 3.0  # depths are ~2; compare relative to that
    if mode.endswith("ED"):  # expected depth is ill-conditioned where almost nothing was drawn
        mask = (ref["alphas"] > 1e-2).expand_as(ref["colors"])
    else:
        mask = torch.ones_like(ref["colors"], dtype=torch.bool)
    assert ((got["colors"] - ref["colors"]).abs()[mask]).max() <= IMG_TOL * depth_scale
    assert (got["alphas"] - ref["alphas"]).abs().max() <= IMG_TOL


def test_early_termination_matches_reference():
    scene = make_scene(n=60, opaque=True, seed=5)
    got, ref = render_both(scene, grads=True)
    # Many opaque layers: without the stop rule T would reach ~0; gsplat stops before T <= 1e-4.
    assert ref["alphas"].max() > 0.999
    assert got["alphas"].max() < 1 - 1e-4 + 1e-6 and ref["alphas"].max() < 1 - 1e-4 + 1e-12
    assert (got["colors"] - ref["colors"]).abs().max() <= IMG_TOL
    assert (got["alphas"] - ref["alphas"]).abs().max() <= IMG_TOL
    assert_grads_close(got["grads"], ref["grads"], GRAD_REL_TOL)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_tile_size_independence(dtype):
    scene = make_scene(channels=4, seed=7)
    scene = {k: v.to(dtype) for k, v in scene.items()}
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    base = rasterize(**scene, width=W, height=H, backend="torch", tile_size=16, near_plane=1.2)
    for tile in (8, 4):
        other = rasterize(**scene, width=W, height=H, backend="torch", tile_size=tile, near_plane=1.2)
        assert (other[0] - base[0]).abs().max() <= tol
        assert (other[1] - base[1]).abs().max() <= tol
        assert other[2]["tile_size"] == tile


def test_per_camera_colors():
    scene = make_scene(channels=3)
    per_cam = torch.stack([scene["colors"], scene["colors"].flip(1)])  # [C, N, D]
    colors, _, _ = rasterize(**{**scene, "colors": per_cam}, width=W, height=H, backend="torch")
    for c in range(2):
        single = {**scene, "colors": per_cam[c], "viewmats": scene["viewmats"][c : c + 1],
                  "Ks": scene["Ks"][c : c + 1], "backgrounds": scene["backgrounds"][c : c + 1]}  # fmt: skip
        expected, _, _ = rasterize(**single, width=W, height=H, backend="torch")
        assert torch.allclose(colors[c], expected[0], atol=1e-6)


# ------------------------------------------------------------------------------------------
# Gradients
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("channels", "mode", "dtype", "rel"),
    [
        (5, "RGB", torch.float32, GRAD_REL_TOL),
        (22, "RGB+ED", torch.float32, GRAD_REL_TOL),
        (5, "RGB+D", torch.float64, 1e-9),
    ],
)
def test_gradients_match_reference(channels, mode, dtype, rel):
    scene = make_scene(channels=channels, seed=11)
    got, ref = render_both(scene, grads=True, dtype=dtype, render_mode=mode, near_plane=1.2)
    assert_grads_close(got["grads"], ref["grads"], rel)


def test_rasterize_to_pixels_gradcheck():
    """The hand-written compositing backward against finite differences (float64)."""
    g = torch.Generator().manual_seed(0)
    I, N, D, w, h, tile = 1, 6, 2, 9, 7, 4
    f64 = dict(dtype=torch.float64)
    means2d = (torch.rand(I, N, 2, generator=g, **f64) * torch.tensor([w, h], **f64)).requires_grad_()
    L = torch.rand(I, N, 2, 2, generator=g, **f64) * 0.8 + torch.eye(2, **f64) * 1.5
    cov = L @ L.transpose(-1, -2)
    inv = torch.linalg.inv(cov)
    conics = torch.stack([inv[..., 0, 0], inv[..., 0, 1], inv[..., 1, 1]], -1).requires_grad_()
    colors = torch.rand(I, N, D, generator=g, **f64).requires_grad_()
    opac = (torch.rand(I, N, generator=g, **f64) * 0.8 + 0.1).requires_grad_()
    bg = torch.rand(I, D, generator=g, **f64).requires_grad_()
    radii = torch.full((I, N, 2), 6, dtype=torch.int32)
    depths = torch.rand(I, N, generator=g, **f64) + 1
    tw, th = tile_grid(w, h, tile)
    _, isect_ids, flatten_ids = isect_tiles(means2d, radii, depths, tile, tw, th)
    offsets = isect_offset_encode(isect_ids, I, tw, th)

    wc = torch.randn(I, h, w, D, generator=g, **f64)
    wa = torch.randn(I, h, w, 1, generator=g, **f64)

    def fn(m, c, col, o, b):  # a scalar loss: one backward pass for the analytic gradient
        out, alpha = rasterize_to_pixels(m, c, col, o, w, h, tile, offsets, flatten_ids, backgrounds=b)
        return (out * wc).sum() + (alpha * wa).sum()

    assert torch.autograd.gradcheck(fn, (means2d, conics, colors, opac, bg), eps=1e-6, atol=1e-6, rtol=1e-4)


# ------------------------------------------------------------------------------------------
# meta, gsplat conventions, densification
# ------------------------------------------------------------------------------------------


def test_meta_matches_gsplat_unpacked_layout():
    scene = make_scene(n=30)
    p = {k: v.clone().requires_grad_(k in PARAMS) for k, v in scene.items()}
    colors, alphas, meta = rasterize(**p, width=W, height=H, backend="torch")
    C, N = 2, 30
    assert meta["gaussian_ids"] is None and meta["n_cameras"] == C
    assert (meta["width"], meta["height"], meta["tile_size"]) == (W, H, 8)  # the torch default
    assert meta["radii"].shape == (C, N, 2) and meta["radii"].dtype == torch.int32
    assert meta["means2d"].shape == (C, N, 2) and meta["depths"].shape == (C, N)
    assert meta["conics"].shape == (C, N, 3) and meta["opacities"].shape == (C, N)
    assert meta["isect_offsets"].shape == (C, meta["tile_height"], meta["tile_width"])
    assert meta["tiles_per_gauss"].shape == (C, N)
    meta["means2d"].retain_grad()
    colors.sum().backward()
    grad = meta["means2d"].grad
    visible = (meta["radii"] > 0).all(-1)
    assert grad.shape == (C, N, 2) and grad[visible].abs().sum() > 0
    assert (grad[~visible] == 0).all()


def test_means2d_gradient_is_in_pixels():
    """d loss / d means2d equals the finite difference of shifting the image content by one
    pixel-space unit, i.e. gsplat's convention that DefaultStrategy rescales by width / 2."""
    scene = make_scene(n=20, dtype=torch.float64, seed=2)
    p = {k: v.clone() for k, v in scene.items()}
    p["means"].requires_grad_()
    colors, _, meta = rasterize(**p, width=W, height=H, backend="torch")
    meta["means2d"].retain_grad()
    weights = torch.rand(colors.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    (colors * weights).sum().backward()
    # Move one Gaussian along the camera's x axis so that its projection moves by dx pixels.
    n = int(torch.nonzero((meta["radii"][0] > 0).all(-1))[3])
    z = meta["depths"][0, n].item()
    fx = scene["Ks"][0, 0, 0].item()
    dx_px = 1e-4
    R = scene["viewmats"][0, :3, :3]
    shift = R.T @ torch.tensor([dx_px * z / fx, 0.0, 0.0], dtype=torch.float64)  # world offset
    losses = []
    for sgn in (1, -1):
        q = {k: v.detach().clone() for k, v in p.items()}
        q["means"][n] += sgn * shift
        q["viewmats"], q["Ks"], q["backgrounds"] = q["viewmats"][:1], q["Ks"][:1], q["backgrounds"][:1]
        c, _, _ = rasterize(**q, width=W, height=H, backend="torch")
        losses.append((c * weights[:1]).sum().item())
    fd = (losses[0] - losses[1]) / (2 * dx_px)
    # Moving the mean also changes the projected covariance slightly; its share is second order.
    assert abs(fd - meta["means2d"].grad[0, n, 0].item()) <= 2e-3 * max(1.0, abs(fd))


def test_projection_matches_gsplat_torch_reference():
    _torch_impl = pytest.importorskip("gsplat.cuda._torch_impl")
    scene = make_scene(n=40, dtype=torch.float64)
    covars, _ = _torch_impl._quat_scale_to_covar_preci(scene["quats"], scene["scales"], compute_preci=False)
    radii_g, means2d_g, depths_g, conics_g, _ = _torch_impl._fully_fused_projection(
        scene["means"], covars, scene["viewmats"], scene["Ks"], W, H, near_plane=1.2
    )
    proj = project_gaussians(
        scene["means"], scene["quats"], scene["scales"], scene["opacities"], scene["viewmats"], scene["Ks"],
        W, H, near_plane=1.2,
    )  # fmt: skip
    ours = (proj.radii > 0).all(-1)
    assert torch.allclose(proj.means2d[ours], means2d_g[ours], atol=1e-9)
    assert torch.allclose(proj.conics[ours], conics_g[ours], rtol=1e-9, atol=1e-12)
    assert torch.allclose(proj.depths, depths_g)
    # gsplat's CUDA radii use the opacity-aware extent; they are never larger than 3.33 sigma.
    assert (proj.radii[ours] <= radii_g[ours]).all()


def test_isect_encoding_matches_gsplat_torch_reference():
    _torch_impl = pytest.importorskip("gsplat.cuda._torch_impl")
    scene = make_scene(n=25, n_cameras=2)
    keys = ("means", "quats", "scales", "opacities", "viewmats", "Ks")
    proj = project_gaussians(*(scene[k] for k in keys), W, H)
    tw, th = tile_grid(W, H, 8)
    tiles, isect_ids, flatten_ids = isect_tiles(proj.means2d, proj.radii, proj.depths, 8, tw, th)
    tiles_g, isect_ids_g, flatten_ids_g = _torch_impl._isect_tiles(
        proj.means2d, proj.radii, proj.depths, 8, tw, th
    )
    assert torch.equal(tiles, tiles_g)
    assert torch.equal(isect_ids, isect_ids_g)
    assert torch.equal(flatten_ids, flatten_ids_g)
    offsets = isect_offset_encode(isect_ids, 2, tw, th)
    assert torch.equal(offsets, _torch_impl._isect_offset_encode(isect_ids_g, 2, tw, th))


def test_spherical_harmonics_match_gsplat_and_render():
    _torch_impl = pytest.importorskip("gsplat.cuda._torch_impl")
    g = torch.Generator().manual_seed(0)
    dirs = torch.randn(50, 3, generator=g, dtype=torch.float64)
    coeffs = torch.randn(50, 16, 3, generator=g, dtype=torch.float64)
    for degree in range(4):
        expected = _torch_impl._spherical_harmonics(degree, dirs, coeffs)
        assert torch.allclose(spherical_harmonics(degree, dirs, coeffs), expected, atol=1e-12)
    scene = make_scene(channels=3)
    sh = torch.randn(48, 9, 3, generator=g) * 0.3
    colors, _, _ = rasterize(**{**scene, "colors": sh}, width=W, height=H, backend="torch", sh_degree=2)
    campos = torch.linalg.inv(scene["viewmats"])[:, :3, 3]
    dirs = scene["means"][None] - campos[:, None]
    rgb = (spherical_harmonics(2, dirs, sh[None].expand(2, -1, -1, -1)) + 0.5).clamp_min(0)
    expected, _, _ = rasterize(**{**scene, "colors": rgb}, width=W, height=H, backend="torch")
    assert torch.allclose(colors, expected, atol=1e-6)


def test_default_strategy_grows_and_prunes_on_cpu():
    from gsplat.strategy import DefaultStrategy

    torch.manual_seed(0)
    scene = make_scene(n=40, channels=3, seed=4)
    logit = lambda x: torch.log(x / (1 - x))  # noqa: E731
    opac = scene["opacities"].clone()
    opac[:6] = 0.002  # below prune_opa: must be pruned at the first refinement
    params = {
        "means": scene["means"],
        "scales": torch.log(scene["scales"]),
        "quats": scene["quats"],
        "opacities": logit(opac),
        "colors": scene["colors"],
        "logits": torch.randn(40, 19),  # an extra per-Gaussian parameter, resized with the rest
    }
    params = {k: torch.nn.Parameter(v.clone()) for k, v in params.items()}
    optimizers = {k: torch.optim.Adam([v], lr=1e-3) for k, v in params.items()}
    strategy = DefaultStrategy(
        refine_start_iter=1, refine_every=2, refine_stop_iter=100, reset_every=1000,
        grow_grad2d=1e-6, prune_opa=0.005, verbose=False,
    )  # fmt: skip
    strategy.check_sanity(params, optimizers)
    state = strategy.initialize_state(scene_scale=1.0)
    target = torch.rand(2, H, W, 3)
    n_before = len(params["means"])
    sizes = []
    for step in range(5):
        colors, _, info = rasterize(
            params["means"], params["quats"], torch.exp(params["scales"]), torch.sigmoid(params["opacities"]),
            params["colors"], scene["viewmats"], scene["Ks"], W, H, backend="torch",
        )  # fmt: skip
        strategy.step_pre_backward(params, optimizers, state, step, info)
        loss = (colors - target).abs().mean() + 1e-3 * params["logits"].square().mean()
        loss.backward()
        strategy.step_post_backward(params, optimizers, state, step, info, packed=False)
        for opt in optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
        sizes.append(len(params["means"]))
    assert sizes[1] == n_before  # nothing happens before the first refinement step (step 2)
    assert all(len(p) == len(params["means"]) for p in params.values())
    assert (torch.sigmoid(params["opacities"]) >= 0.005).all()  # the 6 transparent ones are gone
    n_pruned_only = n_before - 6
    assert sizes[2] > n_pruned_only  # and many others were duplicated or split
    assert params["logits"].shape == (len(params["means"]), 19)


# ------------------------------------------------------------------------------------------
# Backend selection and the gsplat backend
# ------------------------------------------------------------------------------------------


def test_auto_backend_on_cpu_and_rejects_unknown():
    means = torch.zeros(3, 3)
    assert resolve_backend("auto", means) in ("cpu", "torch")  # "torch" only where the kernel cannot build
    assert resolve_backend("auto", means.double()) == "torch"
    with pytest.raises(ValueError, match="backend"):
        resolve_backend("cuda", means)
    scene = make_scene(n=20)
    with pytest.raises(ValueError, match="render_mode"):
        rasterize(**scene, width=W, height=H, backend="torch", render_mode="RGBD")
    with pytest.raises(ValueError, match="quats"):
        rasterize(**{**scene, "quats": scene["quats"][:5]}, width=W, height=H, backend="torch")


def test_import_does_not_import_gsplat():
    code = "import sys, facegs.splat.rasterize; assert 'gsplat' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("channels", [3, 22, 40])
@pytest.mark.parametrize("mode", ["RGB", "RGB+ED"])
def test_torch_backend_matches_gsplat_cuda(channels, mode):
    """Parity on a GPU: torch backend vs gsplat's CUDA kernels, float32 both.

    Tolerances: images/alphas 1e-4 max abs (gsplat uses __expf and float atomics); gradients
    2e-3 x max abs gsplat gradient per parameter; radii identical for >= 99 % of Gaussians
    (float32 rounding may move a ceil() by one pixel).
    """
    scene = make_scene(n=300, channels=channels, seed=channels, width=64, height=48)
    out = {}
    for backend in ("gsplat", "torch"):
        p = {k: v.cuda().clone().requires_grad_(k in PARAMS or k == "backgrounds") for k, v in scene.items()}
        colors, alphas, meta = rasterize(**p, width=64, height=48, backend=backend, render_mode=mode)
        meta["means2d"].retain_grad()
        g = torch.Generator(device="cuda").manual_seed(0)
        wc = torch.randn(colors.shape, generator=g, device="cuda")
        wa = torch.randn(alphas.shape, generator=g, device="cuda")
        ((colors * wc).sum() + (alphas * wa).sum()).backward()
        grads = {k: p[k].grad for k in PARAMS + ("backgrounds",)}
        grads["means2d"] = meta["means2d"].grad
        out[backend] = (colors, alphas, meta, grads)
    (cg, ag, mg, gg), (ct, at, mt, gt) = out["gsplat"], out["torch"]
    assert ct.shape == cg.shape
    assert (mg["radii"] == mt["radii"]).all(-1).float().mean() >= 0.99
    valid = (ag > 1e-2).expand_as(cg) if mode.endswith("ED") else torch.ones_like(cg, dtype=torch.bool)
    assert (ct - cg).abs()[valid].max() <= 1e-4 * (3.0 if mode != "RGB" else 1.0)
    assert (at - ag).abs().max() <= 1e-4
    for k, ref in gg.items():
        visible = (mg["radii"] > 0).all(-1) if k == "means2d" else slice(None)
        assert (gt[k][visible] - ref[visible]).abs().max() <= 2e-3 * ref[visible].abs().max(), k


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_auto_backend_on_cuda_is_gsplat():
    assert resolve_backend("auto", torch.zeros(1, 3, device="cuda")) == "gsplat"
    assert resolve_backend("auto", torch.zeros(1, 3)) in ("cpu", "torch")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_torch_backend_same_on_cuda_and_cpu():
    """The torch backend is device-agnostic: CUDA and CPU agree to float32 rounding (1e-5)."""
    scene = make_scene(n=200, channels=22, seed=1, width=64, height=48)
    outs = []
    for device in ("cpu", "cuda"):
        p = {k: v.to(device).clone().requires_grad_(k in PARAMS) for k, v in scene.items()}
        colors, alphas, meta = rasterize(**p, width=64, height=48, backend="torch", render_mode="RGB+D")
        (colors.square().sum() + alphas.sum()).backward()
        outs.append((colors.cpu(), alphas.cpu(), meta["radii"].cpu(), {k: p[k].grad.cpu() for k in PARAMS}))
    (c0, a0, r0, g0), (c1, a1, r1, g1) = outs
    assert torch.equal(r0, r1)
    assert (c0 - c1).abs().max() <= 1e-5 * 3 and (a0 - a1).abs().max() <= 1e-5
    for k in PARAMS:
        assert (g0[k] - g1[k]).abs().max() <= 1e-4 * g0[k].abs().max(), k
