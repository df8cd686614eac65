"""facegs.fit and facegs.fit.losses on a tiny synthetic subject (32 px, a few views, few steps).

The subject is rendered from a known Gaussian "head" (an ellipsoidal shell with three classes:
hair on top, nose in front, skin elsewhere) with facegs.splat.rasterize; input labels are the ground truth
with a fraction of pixels set to random classes (the Semantic-NeRF noise protocol).
"""

import dataclasses
import math

import numpy as np
import pytest
import torch

from facegs.core import cameras as C
from facegs.core.imageio import write_confidence, write_labels, write_mask, write_rgb
from facegs.core.manifest import SubjectManifest, View, load_manifest, save_manifest
from facegs.fit.config import FitConfig, InitConfig, fit_config
from facegs.fit.data import load_view_data, scene_scale
from facegs.fit.densify import CappedDefaultStrategy, make_strategy
from facegs.fit.init import init_scene
from facegs.fit.loop import fit_step, fit_subject, fit_views, make_optimizers, new_fit_state
from facegs.fit.losses import consensus_inlier_weight, label_nll, ssim, update_inlier_prior
from facegs.splat.rasterize import rasterize
from facegs.splat.rgb_labels import background_label_vector, label_colors, label_probs, render_rgb_labels
from facegs.splat.scene import activated, colors_and_logits, make_params

SIZE = 32
HEAD = (0.08, 0.11, 0.09)


def gt_scene(n=1200, seed=0):
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(n, 3, generator=g)
    xyz = d / d.norm(dim=-1, keepdim=True) * torch.tensor(HEAD)
    cls = torch.where(xyz[:, 1] > 0.05, 17, torch.where(xyz[:, 2] > 0.06, 10, 1))
    pal = torch.zeros(19, 3)
    pal[1], pal[10], pal[17] = torch.tensor([0.9, 0.7, 0.6]), torch.tensor([0.8, 0.3, 0.3]), torch.tensor([0.2, 0.1, 0.1])
    rgb = (pal[cls] + 0.1 * torch.rand(n, 3, generator=g)).clamp(0, 1)
    logits = torch.full((n, 19), -10.0)
    logits[torch.arange(n), cls] = 10.0
    return make_params(xyz, rgb, torch.full((n,), math.log(0.02)), logits=logits, sh_degree=0, opacity=0.95)


def make_subject(root, n_views=8, noise=0.3, seed=0) -> SubjectManifest:
    for d in ("images", "labels", "gt_labels", "masks", "conf"):
        (root / d).mkdir(parents=True, exist_ok=True)
    p = gt_scene(seed=seed)
    rng = np.random.default_rng(seed)
    K = C.intrinsics_from_fov(SIZE, SIZE, 30)
    m, q, s, o = activated(p)
    views = []
    for i in range(n_views):
        w2c = C.head_pose_to_w2c(-90 + 180 * i / (n_views - 1), 20 * (-1) ** i, 0, 0.6)
        vm, Kt = torch.tensor(w2c, dtype=torch.float32)[None], torch.tensor(K, dtype=torch.float32)[None]
        with torch.no_grad():
            out, a, _ = rasterize(m, q, s, o, colors_and_logits(p, vm), vm, Kt, SIZE, SIZE, backend="torch")
        a = a[0, ..., 0].numpy()
        img = out[0, ..., :3].clamp(0, 1).numpy() + (1 - a[..., None]) * np.array([0.3, 0.5, 0.7])
        gt = out[0, ..., 3:].argmax(-1).numpy().astype(np.uint8)
        gt[a < 0.5] = 0
        noisy = gt.copy()
        flip = rng.random(gt.shape) < noise
        noisy[flip] = rng.integers(0, 19, int(flip.sum()))
        vid = f"v{i:02d}"
        write_rgb(root / f"images/{vid}.png", (img * 255).round().clip(0, 255).astype(np.uint8))
        write_labels(root / f"labels/{vid}.png", noisy)
        write_labels(root / f"gt_labels/{vid}.png", gt)
        write_mask(root / f"masks/{vid}.png", a >= 0.5)
        write_confidence(root / f"conf/{vid}.png", np.where(flip, 0.4, 0.9))
        views.append(View(view_id=vid, image=f"images/{vid}.png", width=SIZE, height=SIZE, K=K, world_to_camera=w2c,
                          labels=f"labels/{vid}.png", gt_labels=f"gt_labels/{vid}.png", mask=f"masks/{vid}.png",
                          confidence=f"conf/{vid}.png"))
    save_manifest(SubjectManifest(subject_id="tiny", label_set="celebamask19", views=tuple(views), root=root))
    return load_manifest(root)


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    return make_subject(tmp_path_factory.mktemp("tiny"))


def small_cfg(**kw) -> FitConfig:
    return fit_config("test", **kw)


def test_presets_and_resolved_schedule():
    cfg = fit_config("cpu_demo")
    assert cfg.steps == 600 and cfg.views_per_step == 1 and isinstance(cfg, FitConfig)
    r = cfg.resolved()
    assert 0 < r.refine_start < r.refine_stop < r.steps and r.reset_every < r.refine_stop
    assert fit_config("test", steps=7).steps == 7
    with pytest.raises(KeyError):
        fit_config("nope")


# ----------------------------------------------------------------------------------------------
# losses
# ----------------------------------------------------------------------------------------------


def _ssim_3dgs(a, b, size=11, sigma=1.5):
    """The 3DGS training code's SSIM (2D window, zero padding), channels-first [B, C, H, W]."""
    x = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    w = (g[:, None] @ g[None, :]).expand(a.shape[1], 1, size, size).contiguous()
    conv = lambda t: torch.nn.functional.conv2d(t, w, padding=size // 2, groups=a.shape[1])  # noqa: E731
    mu1, mu2 = conv(a), conv(b)
    s11, s22, s12 = conv(a * a) - mu1**2, conv(b * b) - mu2**2, conv(a * b) - mu1 * mu2
    c1, c2 = 0.01**2, 0.03**2
    return (((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1**2 + mu2**2 + c1) * (s11 + s22 + c2))).mean()


def test_ssim_matches_3dgs_and_decreases_with_noise():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 24, 20, 3, generator=g)
    assert float(ssim(x, x)) == pytest.approx(1.0, abs=1e-5)
    noise = torch.rand(x.shape, generator=g)
    vals = [float(ssim(x, (x + a * noise).clamp(0, 1))) for a in (0.1, 0.3, 0.6)]
    assert vals[0] > vals[1] > vals[2]
    y = (x + 0.3 * noise).clamp(0, 1)
    ref = _ssim_3dgs(x.permute(0, 3, 1, 2), y.permute(0, 3, 1, 2))
    assert float(ssim(x, y)) == pytest.approx(float(ref), abs=1e-5)


def test_consensus_down_weights_labels_that_a_confident_consensus_contradicts():
    K = 19
    probs = torch.full((1, 1, 4, K), 0.001 / (K - 1))
    probs[0, 0, :, 1] = 0.999  # a confident consensus says class 1 everywhere
    probs[0, 0, 3] = 1.0 / K  # ...except pixel 3 where it is unsure
    labels = torch.tensor([[[1, 2, 255, 2]]])  # agree, disagree, ignored, disagree-but-unsure
    r = consensus_inlier_weight(probs, labels, 0.9)[0, 0]
    p_wrong = 0.001 / (K - 1)
    assert float(r[1]) == pytest.approx(0.9 * p_wrong / (0.9 * p_wrong + 0.1 / K), rel=1e-4)
    assert r[0] > 0.99 and r[1] < 0.01 and r[2] == 0 and r[3] == pytest.approx(0.9, abs=1e-6)
    # M-step: the per-view inlier prior falls when many labels are outliers
    pi = update_inlier_prior(torch.tensor([0.9]), r[None, None], (labels != 255), momentum=0.0)
    assert float(pi) == pytest.approx(float((r[0] + r[1] + r[3]) / 3), abs=1e-6)


@pytest.mark.parametrize("mode", ["logits", "probs"])
def test_label_probs_are_distributions(mode):
    g = torch.Generator().manual_seed(0)
    alpha = torch.rand(2, 3, 3, 1, generator=g)
    per_g = label_colors(torch.randn(5, 19, generator=g), mode)
    w = torch.rand(2, 3, 3, 5, generator=g)
    w = w / w.sum(-1, keepdim=True) * alpha  # blend weights summing to alpha
    bg = background_label_vector(19, mode, 0)
    rendered = w @ per_g + (1 - alpha) * bg
    p = label_probs(rendered, alpha, mode, 0)
    assert torch.allclose(p.sum(-1), torch.ones(2, 3, 3), atol=1e-5) and (p >= 0).all()


# ----------------------------------------------------------------------------------------------
# data and rendering
# ----------------------------------------------------------------------------------------------


def test_load_view_data_downscales_and_scales_K(subject):
    full = load_view_data(subject)
    half = load_view_data(subject, views=["v01", "v03"], downscale=2)
    assert (half.width, half.height) == (SIZE // 2, SIZE // 2) and half.view_ids == ["v01", "v03"]
    assert torch.allclose(half.Ks[0], torch.diag(torch.tensor([0.5, 0.5, 1.0])) @ full.Ks[1])
    assert half.labels.dtype == torch.int64 and half.masks.shape == (2, 16, 16)
    assert set(half.labels.unique().tolist()) <= set(full.labels.unique().tolist())


@pytest.mark.parametrize("mode", ["logits", "probs"])
def test_label_loss_gives_no_gradient_to_geometry_when_disabled(subject, mode):
    data = load_view_data(subject, views=["v02", "v05"])
    cfg = small_cfg()
    params, _ = init_scene(subject, data, cfg)
    with torch.no_grad():
        params["logits"].normal_(generator=torch.Generator().manual_seed(1))
    grads, values = {}, {}
    for g2g in (True, False):
        for p in params.values():
            p.grad = None
        bg = torch.rand(2, 3, generator=torch.Generator().manual_seed(0))
        rgb, lab, alpha, meta = render_rgb_labels(params, data.viewmats, data.Ks, data.width, data.height, bg, sh_degree=0,
                                       label_mode=mode, label_grad_to_geometry=g2g, backend="torch")
        meta["means2d"].retain_grad()
        nll = label_nll(lab, alpha, data.labels, mode, 0)
        nll.mean().backward()
        grads[g2g] = {k: (None if p.grad is None else p.grad.clone()) for k, p in params.items()}
        grads[g2g]["means2d"] = meta["means2d"].grad
        values[g2g] = lab.detach()
    assert torch.allclose(values[True], values[False], atol=1e-5)
    for k in ("means", "scales", "quats", "opacities", "means2d"):
        off = grads[False][k]
        assert off is None or not off.any(), k  # exactly zero
        if k != "quats":  # isotropic initial scales: rotations do not matter yet
            assert grads[True][k] is not None and grads[True][k].abs().sum() > 0, k
    assert torch.allclose(grads[True]["logits"], grads[False]["logits"], atol=1e-6, rtol=1e-4)


# ----------------------------------------------------------------------------------------------
# fitting
# ----------------------------------------------------------------------------------------------


def test_short_fit_reduces_rgb_loss_and_improves_labels(subject):
    res = fit_subject(subject, small_cfg(steps=40, densify=False, eval_at_end=True), progress=False)
    first, last = res.metrics[:6], res.metrics[-6:]
    mean = lambda ms, k: sum(m[k] for m in ms) / len(ms)  # noqa: E731
    assert mean(last, "rgb") < 0.8 * mean(first, "rgb")
    assert mean(last, "label_acc") > mean(first, "label_acc") + 0.2
    ev = res.summary["eval"]
    # the fused labels beat the noisy inputs against the ground truth
    assert ev["label_acc_gt"] > ev["input_acc_gt"]
    assert {"loss", "rgb", "label", "psnr", "label_acc", "n_gaussians", "time_s"} <= set(res.metrics[0])


@pytest.mark.parametrize("mode", ["logits", "probs"])
def test_label_modes_with_consensus_and_detached_labels_run(subject, mode):
    cfg = small_cfg(steps=12, label_mode=mode, consensus_outliers=True, consensus_start=4,
                    label_grad_to_geometry=False, densify=False)
    res = fit_subject(subject, cfg, progress=False)
    assert "inlier_frac" in res.metrics[-1] and "inlier_frac" not in res.metrics[3]
    assert all(math.isfinite(m["loss"]) for m in res.metrics)


def _functional_setup(subject, cfg):
    cfg = cfg.resolved()
    data = load_view_data(subject)
    params, _ = init_scene(subject, data, cfg)
    sc = scene_scale(data.viewmats)
    optimizers = make_optimizers(params, cfg, sc)
    strategy = make_strategy(cfg)
    state = strategy.initialize_state(scene_scale=sc)
    strategy.check_sanity(params, optimizers)
    return cfg, data, params, optimizers, strategy, state, new_fit_state(len(data), cfg, sc)


def test_opacity_reset_happens_at_the_configured_step(subject):
    torch.manual_seed(0)
    cfg, data, params, opt, strat, state, fs = _functional_setup(
        subject, small_cfg(steps=12, reset_every=4, refine_start=100, refine_stop=10, init=InitConfig(
            num_points=300, grid_res=24, opacity=0.5)))
    max_op, moment = [], []
    for _ in range(6):
        m = fit_step(params, opt, strat, state, data, cfg, fs, backend="torch")
        max_op.append(float(torch.sigmoid(params["opacities"].detach()).max()))
        moment.append(float(opt["opacities"].state[params["opacities"]]["exp_avg"].abs().max()))
        assert ("reset_opacity" in m["events"]) == (m["step"] == 4)
    assert max_op[3] > 0.3 and max_op[4] <= 0.01 + 1e-6  # capped to 2 * prune_opa right after step 4
    assert moment[3] > 0 and moment[4] == 0.0  # and its Adam moments zeroed


def test_densification_grows_prunes_and_respects_the_cap(subject):
    cfg = small_cfg(steps=16, refine_start=2, refine_every=3, refine_stop=15, reset_every=1000, grow_grad2d=1e-6,
                    max_gaussians=900, init=InitConfig(num_points=600, grid_res=24))
    res = fit_subject(subject, cfg, progress=False)
    ns = [m["n_gaussians"] for m in res.metrics]
    assert ns[0] == 600 and max(ns) > 600 and max(ns) <= 900
    assert res.summary["n_refines"] >= 1
    assert isinstance(make_strategy(cfg.resolved()), CappedDefaultStrategy)
    # pruning: every Gaussian below the opacity threshold disappears at a refine step
    cfg2 = small_cfg(steps=5, refine_start=2, refine_every=3, refine_stop=5, grow_grad2d=1e9, prune_opa=0.2,
                     init=InitConfig(num_points=400, grid_res=24, opacity=0.1))
    ns2 = [m["n_gaussians"] for m in fit_subject(subject, cfg2, progress=False).metrics]
    assert ns2[2] == 400 and ns2[3] < 400


def test_fit_is_deterministic(subject):
    cfg = small_cfg(steps=10, refine_start=2, refine_every=3, grow_grad2d=1e-5)
    a = fit_subject(subject, cfg, progress=False)
    b = fit_subject(subject, cfg, progress=False)
    assert a.metrics[-1]["n_gaussians"] == b.metrics[-1]["n_gaussians"]
    for k in a.params:
        assert torch.equal(a.params[k], b.params[k]), k
    c = fit_subject(subject, dataclasses.replace(cfg, seed=1), progress=False)
    assert not torch.equal(a.params["means"], c.params["means"]) if a.params["means"].shape == c.params["means"].shape else True


def test_rgb_only_fit_without_labels(subject):
    data = load_view_data(subject)
    data = dataclasses.replace(data, labels=None, gt_labels=None)
    res = fit_views(data, small_cfg(steps=4, densify=False, eval_at_end=True), manifest=subject, progress=False)
    assert "label" not in res.metrics[-1] and "label_acc_input" not in res.summary["eval"]


def test_background_labels_inside_the_mask_do_not_pull_the_logits(subject, tmp_path):
    """matte_over_background: a 'background' label where the view's mask says foreground (a parser
    eating the silhouette) weighs 1 - mask; other labels, and views without a mask, keep their weight."""
    from facegs.fit.loop import label_pixel_weights

    data = load_view_data(subject, views=["v00", "v01"])
    labels = data.labels.clone()
    inside = data.masks > 0.5
    labels[inside & (torch.arange(SIZE)[None, None, :] < SIZE // 2)] = 0  # half the head labelled background
    idx = torch.tensor([0, 1])
    probs = torch.full((2, SIZE, SIZE, 19), 1 / 19)
    cfg = small_cfg(confidence_weighting=False, label_class_balance=0.0)
    fs = new_fit_state(2, cfg.resolved(), 1.0)
    w, _ = label_pixel_weights(data, idx, labels, probs, cfg.resolved(), fs)
    eaten = (labels == 0) & inside
    assert eaten.sum() > 20 and (w[eaten] == 0).all()
    assert (w[~eaten & (labels != 255)] == 1).all()  # true background and the other classes untouched
    off, _ = label_pixel_weights(data, idx, labels, probs, dataclasses.replace(cfg.resolved(), matte_over_background=False), fs)
    assert (off[labels != 255] == 1).all()
    # a view that brought no mask (its mask is filled with ones) keeps its background labels
    data.has_mask = torch.tensor([True, False])
    mixed, _ = label_pixel_weights(data, idx, labels, probs, cfg.resolved(), fs)
    assert (mixed[0][eaten[0]] == 0).all() and (mixed[1][labels[1] != 255] == 1).all()


def test_views_without_a_mask_are_recorded(tmp_path):
    m = make_subject(tmp_path / "s", n_views=3)
    views = list(m.views)
    views[1] = dataclasses.replace(views[1], mask=None)  # images are RGB: no alpha to fall back on
    save_manifest(dataclasses.replace(m, views=tuple(views)))
    data = load_view_data(load_manifest(tmp_path / "s"))
    assert data.has_mask.tolist() == [True, False, True]
    assert (data.masks[1] == 1).all()
    assert load_view_data(m).has_mask is None  # every view has one: nothing to record
