"""Which pixels of a render some capture view saw (facegs.render.observed): exact geometry on planes,
then the real renderer on a fitted synthetic subject."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facegs.core.cameras import look_at
from facegs.headframe.visible import ViewRender
from facegs.render.observed import observation_counts, unobserved_fraction

W = H = 32
F = 40.0


def _K(w: int = W, h: int = H) -> np.ndarray:
    return np.array([[F * w / W, 0.0, w / 2], [0.0, F * h / H, h / 2], [0.0, 0.0, 1.0]])


def _plane_depth(K: np.ndarray, w2c: np.ndarray, w: int, h: int, z_plane: float = 0.0) -> np.ndarray:
    """Camera z of the world plane z = z_plane at every pixel centre (+0.5), 0 where the ray misses it."""
    c2w = np.linalg.inv(w2c)
    ys, xs = np.mgrid[0:h, 0:w]
    d_cam = np.stack([(xs + 0.5 - K[0, 2]) / K[0, 0], (ys + 0.5 - K[1, 2]) / K[1, 1], np.ones_like(xs, float)], -1)
    d_w = d_cam @ c2w[:3, :3].T
    o = c2w[:3, 3]
    t = (z_plane - o[2]) / d_w[..., 2]  # ray parameter = camera z, since d_cam has z = 1
    return np.where(t > 0, t, 0.0)


def _capture(eye, w: int = W, h: int = H, depth=None, alpha=None) -> ViewRender:
    w2c = look_at(np.asarray(eye, float), np.zeros(3), np.array([0.0, 1.0, 0.0]))
    K = _K(w, h)
    d = _plane_depth(K, w2c, w, h) if depth is None else depth
    a = (d > 0).astype(np.float32) if alpha is None else alpha
    return ViewRender(K, w2c, w, h, np.zeros((h, w, 2), np.float16), a, d.astype(np.float32))


def test_a_plane_seen_by_every_capture_counts_them_all():
    caps = [_capture([x, 0.0, 2.0]) for x in (-0.3, 0.0, 0.3)]
    w2c = look_at(np.array([0.1, 0.1, 2.0]), np.zeros(3), np.array([0.0, 1.0, 0.0]))
    K = _K()
    d = _plane_depth(K, w2c, W, H)
    n = observation_counts(d, np.ones((H, W)), K, w2c, caps)
    assert n.dtype == np.uint8 and n.shape == (H, W)
    assert (n[8:24, 8:24] == 3).all()  # the centre is inside every capture frame
    # an identical camera observes every pixel it renders (pixel centres at +0.5 both ways)
    same = _capture([0.0, 0.0, 2.0])
    d0 = _plane_depth(same.K, same.w2c, W, H)
    assert (observation_counts(d0, np.ones((H, W)), same.K, same.w2c, [same]) == 1).all()
    # and one at half the resolution (K scaled) too
    half = _capture([0.0, 0.0, 2.0], W // 2, H // 2)
    assert (observation_counts(d0, np.ones((H, W)), same.K, same.w2c, [half]) == 1).all()


def test_occluded_out_of_frame_and_empty_pixels_are_not_observed():
    K = _K()
    w2c = look_at(np.array([0.0, 0.0, 2.0]), np.zeros(3), np.array([0.0, 1.0, 0.0]))
    d = _plane_depth(K, w2c, W, H)
    a = np.ones((H, W))
    a[:4] = 0.2  # nothing opaque rendered here
    # capture 1: a nearer surface (an occluder at half the depth) over its left half
    c1 = _capture([0.0, 0.0, 2.0])
    occ = c1.depth.copy()
    occ[:, : W // 2] *= 0.5
    c1 = ViewRender(c1.K, c1.w2c, W, H, c1.probs, c1.alpha, occ)
    # capture 2: sees nothing opaque at all; capture 3: looks away from the plane (everything behind it)
    c2 = _capture([0.0, 0.0, 2.0], alpha=np.zeros((H, W), np.float32))
    c3 = ViewRender(K, look_at(np.array([0.0, 0.0, 2.0]), np.array([0.0, 0.0, 4.0]), np.array([0.0, 1.0, 0.0])),
                    W, H, c1.probs, np.ones((H, W), np.float32), np.ones((H, W), np.float32))
    # capture 4: zoomed in (focal x3): only the central third of the render is inside its frame
    K4 = _K() * np.array([[3.0], [3.0], [1.0]])
    K4[:2, 2] = W / 2
    w4 = look_at(np.array([0.0, 0.0, 2.0]), np.zeros(3), np.array([0.0, 1.0, 0.0]))
    c4 = ViewRender(K4, w4, W, H, c1.probs, np.ones((H, W), np.float32), _plane_depth(K4, w4, W, H).astype(np.float32))
    n = observation_counts(d, a, K, w2c, [c1, c2, c3, c4])
    assert (n[:4] == 0).all()  # not rendered opaque: 0 whatever the captures
    assert (n[4:, : W // 2 - 1][:, :10] == 0).all()  # left: occluded in c1, outside c4's frame
    assert (n[12:20, W // 2 + 1: 20] == 2).all()  # centre right: c1 and c4
    assert (n[4:, W - 4:] == 1).all()  # right edge: c1 only
    # the tolerance is relative: a capture depth 1% off still observes, 5% off does not
    for scale, want in ((1.01, 1), (1.05, 0)):
        cs = ViewRender(c1.K, c1.w2c, W, H, c1.probs, c1.alpha, (_plane_depth(c1.K, c1.w2c, W, H) * scale).astype(np.float32))
        assert (observation_counts(d, np.ones((H, W)), K, w2c, [cs]) == want).all()


def test_observation_counts_rejects_bad_input():
    K = _K()
    w2c = np.eye(4)
    with pytest.raises(ValueError, match="same"):
        observation_counts(np.ones((4, 4)), np.ones((4, 5)), K, w2c, [])
    with pytest.raises(ValueError, match="depth_tol"):
        observation_counts(np.ones((4, 4)), np.ones((4, 4)), K, w2c, [], depth_tol=0)
    assert (observation_counts(np.ones((4, 4)), np.ones((4, 4)), K, w2c, []) == 0).all()  # no captures: unseen
    assert unobserved_fraction(np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.uint8)) is None
    assert unobserved_fraction(np.array([[0, 3], [1, 0]], np.uint8), np.array([[5, 5], [5, 0]], np.uint8)) == 0.3333


@pytest.fixture(scope="module")
def refined(tmp_path_factory):
    """A frontal-arc synthetic subject (|yaw| <= 45, pitch 0), fitted briefly with exact labels."""
    from facegs.core.manifest import load_manifest
    from facegs.factory.config import FactoryConfig
    from facegs.factory.subject import place
    from facegs.fit.loop import fit_subject
    from facegs.label.views import initial_labels
    from facegs.synth.generate import generate_subject

    torch.manual_seed(0)
    m = generate_subject(tmp_path_factory.mktemp("obs"), "s0", 11, rig="frontal8", res=48, background="plain")
    m = load_manifest(m.root)
    fc = FactoryConfig(labels="noise:pixel:0.0", fit_preset="test", fit_overrides={"steps": 120}, n_renders=4,
                       res=48)
    labels = initial_labels(m, fc.labels, seed=0)
    cfg = fc.refine(0)
    fit = fit_subject(m, cfg.fit, labels=labels)
    poses = np.array([[0.0, 0.0, 0.0], [0.0, -40.0, 0.0], [90.0, 0.0, 0.0], [-30.0, 30.0, 0.0]])
    return m, fc, labels, fit, poses, place


def test_renders_say_what_the_capture_views_did_not_see(refined):
    """A frontal render is seen by the rig; a profile (yaw 90) and a view from below show surface no
    capture view saw. The counts change nothing else; --ignore-unobserved ignores exactly those pixels."""
    import dataclasses

    m, fc, labels, fit, poses, place = refined
    r = place(m, fc.refine(0), fit, labels=labels, poses=poses)
    views = list(r.views())
    assert all(v.observed is not None and v.observed.shape == v.labels.shape for v in views)
    un = [v.unobserved_fraction for v in views]
    assert un[0] < 0.05 and un[2] > un[0] + 0.05 and un[1] > un[0]  # frontal vs profile, vs from below
    fg0 = views[0].labels > 0
    assert np.median(views[0].observed[fg0]) >= 4  # most of a frontal face is seen by half the arc or more
    assert r.quality["unobserved_fraction"] == pytest.approx(
        sum(((v.labels > 0) & (v.observed == 0)).sum() for v in r.probe) / sum((v.labels > 0).sum() for v in r.probe),
        abs=1e-4)
    # the same renders without the counts: bit-identical RGB, labels, confidence and ignore
    from facegs.render.views import render_novel_views

    plain = list(render_novel_views(r.params, r.cameras, r.width, r.height, r.head_frame.world_from_head, r.cfg.fit,
                                    r.cleanup, progress=False))
    for a, b in zip(views, plain):
        assert b.observed is None
        for k in ("rgb", "labels", "confidence", "ignore"):
            assert np.array_equal(getattr(a, k), getattr(b, k)), k
    # --ignore-unobserved: the default's ignore plus the unseen labelled pixels, nothing else
    on = dataclasses.replace(fc, ignore_unobserved=True)
    r2 = place(m, on.refine(0), fit, labels=labels, poses=poses)
    for a, b in zip(views, r2.views()):
        unseen = (a.observed == 0) & (a.labels > 0)
        assert np.array_equal(b.ignore, a.ignore | unseen) and np.array_equal(b.labels, a.labels)
        assert b.cleanup_report["unobserved_ignored_px"] == int((unseen & ~a.ignore).sum())
    assert unseen.sum() > 0 or any(((v.observed == 0) & (v.labels > 0)).any() for v in views)
    # each sample's json carries its own share
    metas = [s.meta for s in r.samples("0123456789abcdef")]
    assert [x["unobserved_fraction"] for x in metas] == [round(u, 6) for u in un]
    assert all(x["fit_metrics"]["unobserved_fraction"] == r.quality["unobserved_fraction"] for x in metas)
