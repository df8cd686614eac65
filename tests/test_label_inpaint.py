"""facegs.fit.inpaint: label support from the real renderer, and thinly seen Gaussians relabelled
from their well-seen neighbours only as far as the labels' disagreement says."""

import numpy as np
import pytest
import torch

from facegs.core.labels import IGNORE_INDEX, get_label_set
from facegs.fit.data import ViewData
from facegs.fit.inpaint import inpaint_labels, label_support, support_half
from facegs.splat.scene import make_params

LS = get_label_set("celebamask19")
SKIN, HAIR, HAT, L_EYE = (LS.index(c) for c in ("skin", "hair", "hat", "l_eye"))


def _scene(means, labels, log_scale, opacity=0.99):
    n = len(means)
    logits = torch.full((n, LS.num_classes), -6.0)
    logits[torch.arange(n), torch.as_tensor(labels)] = 6.0
    p = make_params(torch.as_tensor(means, dtype=torch.float32), torch.full((n, 3), 0.5),
                    torch.as_tensor(log_scale, dtype=torch.float32), sh_degree=0, opacity=opacity, logits=logits)
    return {k: v.detach() for k, v in p.items()}


def _view(labels: np.ndarray) -> ViewData:
    h, w = labels.shape
    K = torch.tensor([[50.0, 0, w / 2], [0, 50.0, h / 2], [0, 0, 1]])
    return ViewData(view_ids=["v0"], images=torch.zeros(1, h, w, 3), labels=torch.as_tensor(labels)[None].long(),
                    confidence=None, masks=None, gt_labels=None, weights=torch.ones(1), viewmats=torch.eye(4)[None],
                    Ks=K[None], width=w, height=h)


def test_support_counts_labelled_pixels_and_disagreement_compares_labels():
    # a big opaque Gaussian in front, a small one hidden right behind it, one off to the side
    params = _scene([[0, 0, 2.0], [0, 0, 3.0], [0.5, 0.0, 2.0]], [SKIN, HAT, SKIN],
                    np.log([0.3, 0.05, 0.05]))
    lab = np.full((32, 32), IGNORE_INDEX, np.uint8)
    lab[12:20, 12:20] = SKIN  # 64 labelled pixels, all covered by the front Gaussian
    sup = label_support(params, _view(lab))
    front, hidden, side = sup.support
    assert 40.0 < front <= 64.0
    assert hidden < 0.01 * front and side < 0.01 * front  # occluded / outside the labelled pixels
    assert sup.disagreement == pytest.approx(0.0)
    lab[12:20, 12:20] = HAIR
    assert label_support(params, _view(lab)).disagreement == pytest.approx(1.0)
    lab[12:16, 12:20] = SKIN
    assert label_support(params, _view(lab)).disagreement == pytest.approx(0.5)
    with pytest.raises(ValueError, match="labels"):
        label_support(params, ViewData(**{**_view(lab).__dict__, "labels": None}))


def test_thinly_seen_gaussians_take_their_neighbours_class_in_proportion_to_the_noise():
    rng = np.random.default_rng(0)
    n = 400
    hair = rng.normal(0, 0.02, (n, 3))
    eye = rng.normal(0, 0.002, (12, 3)) + [0.3, 0, 0]  # a small, well-seen part elsewhere
    thin = hair[:20] + rng.normal(0, 0.003, (20, 3))  # thinly seen, random classes, inside the hair
    means = np.concatenate([hair, eye, thin])
    labels = np.concatenate([np.full(n, HAIR), np.full(12, L_EYE), rng.choice([HAT, L_EYE, SKIN], 20)])
    params = _scene(means, labels, np.full(len(means), np.log(0.01)))
    support = np.concatenate([np.full(n, 30.0), np.full(12, 20.0), np.full(20, 0.3)])

    # noisy labels (rho 0.5): the thin ones become hair, the eye keeps its class
    new, changed = inpaint_labels(params, support, support_half(0.5, 8.0))
    cls = new["logits"].argmax(1).numpy()
    assert (cls[:n] == HAIR).all() and (cls[n:n + 12] == L_EYE).all() and (cls[n + 12:] == HAIR).all()
    assert changed == int((labels[n + 12:] != HAIR).sum()) > 0
    assert torch.equal(new["means"], params["means"])  # geometry untouched

    # clean labels (rho 0.01): s_half ~ 0.08 px, a Gaussian with 0.3 px keeps most of its own belief
    assert support_half(0.01, 8.0) == pytest.approx(8.0 * 0.01 / 0.99)
    kept, changed = inpaint_labels(params, support, support_half(0.01, 8.0))
    assert changed == 0 and (kept["logits"].argmax(1).numpy() == labels).all()
    same, changed = inpaint_labels(params, support, 0.0)
    assert same is params and changed == 0
    assert support_half(1.0, 8.0) == pytest.approx(8.0 * 0.9 / 0.1)  # capped


def test_views_with_left_and_right_swapped_are_found_against_the_consensus():
    from facegs.fit.config import FitConfig
    from facegs.fit.lr_views import find_swapped_views, flip_views
    from facegs.splat.rgb_labels import render_rgb_labels

    l_eye, r_eye = LS.index("l_eye"), LS.index("r_eye")
    params = _scene([[-0.3, 0, 2.0], [0.3, 0, 2.0], [0, 0.4, 2.0]], [l_eye, r_eye, SKIN], np.log([0.12, 0.12, 0.12]))
    cfg = FitConfig().resolved()
    views = []
    for dx in (0.0, 0.05, -0.05):  # three cameras, slightly apart
        vm = torch.eye(4)
        vm[0, 3] = dx
        K = torch.tensor([[50.0, 0, 16], [0, 50.0, 16], [0, 0, 1]])
        _, lab, _, _ = render_rgb_labels(params, vm[None], K[None], 32, 32, torch.zeros(1, 3), label_mode=cfg.label_mode)
        views.append((vm, K, lab[0].argmax(-1)))
    labels = torch.stack([v[2] for v in views])
    assert int(((labels == l_eye) | (labels == r_eye)).sum(dim=(1, 2)).min()) >= 50
    from facegs.fit.lr_views import flip_table

    lut, _ = flip_table()
    labels[1] = lut[labels[1]]  # view 1 has left and right exchanged
    data = ViewData(view_ids=["a", "b", "c"], images=torch.zeros(3, 32, 32, 3), labels=labels.clone(),
                    confidence=None, masks=None, gt_labels=None, weights=torch.ones(3),
                    viewmats=torch.stack([v[0] for v in views]), Ks=torch.stack([v[1] for v in views]),
                    width=32, height=32)
    found = find_swapped_views(params, data, cfg)
    assert [f["view"] for f in found] == ["b"] and found[0]["agree_flipped"] > 10 * max(found[0]["agree"], 1)
    flip_views(data, found)
    assert torch.equal(data.labels[1], lut[labels[1]]) and torch.equal(data.labels[0], labels[0])
    assert (data.labels[1][labels[1] == SKIN] == SKIN).all()  # unsided classes unchanged
    assert find_swapped_views(params, data, cfg) == []
