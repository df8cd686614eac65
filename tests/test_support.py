"""Label support (facegs.fit.support): the capture views' labels lifted onto the Gaussians, and the
rule that gives a Gaussian the class its views back when they do not back its own.

The scene is a plane of small opaque Gaussians seen by three real cameras through the real
renderer; its label maps are rendered from the Gaussians' true classes."""

import numpy as np
import torch

from facegs.core.labels import get_label_set
from facegs.fit.data import ViewData
from facegs.fit.support import SupportConfig, isolated_pixels, label_votes, relabel_unsupported
from facegs.splat.rasterize import rasterize
from facegs.splat.scene import activated, make_params

LS = get_label_set("celebamask19")
SKIN, NOSE, MOUTH, EAR = (LS.index(c) for c in ("skin", "nose", "mouth", "l_ear"))
H = W = 144


def _scene(classes: np.ndarray, means: np.ndarray) -> dict[str, torch.Tensor]:
    n = len(means)
    logits = torch.full((n, LS.num_classes), -6.0)
    logits[torch.arange(n), torch.as_tensor(classes)] = 6.0
    p = make_params(torch.as_tensor(means, dtype=torch.float32), torch.full((n, 3), 0.5),
                    torch.full((n,), float(np.log(0.008))), sh_degree=0, opacity=0.95, logits=logits)
    return {k: v.detach() for k, v in p.items()}


def _cameras() -> tuple[torch.Tensor, torch.Tensor]:
    """Three cameras 1 m in front of the plane (OpenCV: +z forward), 0 / +-8 cm to the side."""
    vms = []
    for dx in (0.0, 0.08, -0.08):
        vm = torch.eye(4)
        vm[0, 3] = dx
        vms.append(vm)
    K = torch.tensor([[330.0, 0.0, W / 2], [0.0, 330.0, H / 2], [0.0, 0.0, 1.0]])
    return torch.stack(vms), K.expand(3, 3, 3).clone()


def _world():
    """A 40 x 40 plane of Gaussians at z = 1 (skin, a 6 x 6 nose patch in the middle), five skin
    Gaussians fitted to 'mouth', and one 'ear' Gaussian 10 cm behind the plane that no view sees."""
    g = np.linspace(-0.15, 0.15, 40)
    xx, yy = np.meshgrid(g, g)
    means = np.stack([xx.ravel(), yy.ravel(), np.ones(xx.size)], axis=1)
    truth = np.full(len(means), SKIN)
    truth[(np.abs(means[:, 0]) < 0.03) & (np.abs(means[:, 1]) < 0.03)] = NOSE
    means = np.vstack([means, [[0.0, 0.0, 1.1]]])
    truth = np.append(truth, SKIN)
    inner = np.nonzero((truth == SKIN) & (np.abs(means[:, :2]).max(axis=1) < 0.1))[0][:-1]
    fitted = truth.copy()
    spurious = inner[:: len(inner) // 5][:5]
    fitted[spurious] = MOUTH
    fitted[-1] = EAR
    return means, truth, fitted, spurious


def _views(params: dict[str, torch.Tensor], noise: float = 0.0, seed: int = 0) -> ViewData:
    """Label maps rendered from ``params``'s classes (argmax where alpha >= 0.5, else background),
    with ``noise`` of the pixels set to uniformly random classes."""
    vms, Ks = _cameras()
    means, quats, scales, opac = activated(params)
    probs = torch.softmax(params["logits"], dim=1)
    labs = []
    rng = np.random.default_rng(seed)
    for v in range(3):
        out, alpha, _ = rasterize(means, quats, scales, opac, probs, vms[v:v + 1], Ks[v:v + 1], W, H)
        lab = np.where(alpha[0, ..., 0].numpy() >= 0.5, out[0].argmax(-1).numpy(), 0).astype(np.int64)
        flip = rng.random(lab.shape) < noise
        lab[flip] = rng.integers(0, LS.num_classes, int(flip.sum()))
        labs.append(lab)
    labels = torch.as_tensor(np.stack(labs))
    return ViewData([f"v{i}" for i in range(3)], torch.zeros(3, H, W, 3), labels, torch.ones(3, H, W, dtype=torch.float32),
                    None, None, torch.ones(3), vms, Ks, W, H)


def test_votes_of_a_view_sum_to_its_confidence_weighted_alpha():
    means, truth, _, _ = _world()
    params = _scene(truth, means)
    data = _views(params)
    conf = torch.as_tensor(np.random.default_rng(1).uniform(0.3, 1.0, (3, H, W)), dtype=torch.float32)
    data.confidence = conf
    data.labels[0, :5] = 255  # ignored pixels vote for nothing
    lv = label_votes(params, data)
    votes = lv.all
    assert votes.shape == lv.joined.shape == lv.isolated.shape == (len(means), LS.num_classes)
    assert float(lv.isolated.sum()) < 1e-3 * float(votes.sum())  # clean labels: parts, not specks
    mq, qq, sc, op = activated(params)
    total = 0.0
    for v in range(3):
        _, alpha, _ = rasterize(mq, qq, sc, op, torch.zeros(len(means), 1), data.viewmats[v:v + 1], data.Ks[v:v + 1], W, H)
        valid = data.labels[v] != 255
        total += float((alpha[0, ..., 0] * conf[v])[valid].sum())
    assert abs(float(votes.sum()) - total) < 1e-3 * total
    # the votes follow the labels: the nose patch's Gaussians vote nose, the plane's skin
    own = votes[torch.arange(len(means)), torch.as_tensor(truth)] / votes.sum(1).clamp_min(1e-9)
    assert float(own[:-1].median()) > 0.9
    assert float(votes[-1].sum()) < 0.05  # the hidden Gaussian is not seen


def test_unsupported_gaussians_take_the_class_their_views_give_and_the_rest_keep_theirs():
    means, truth, fitted, spurious = _world()
    views = _views(_scene(truth, means))  # the views' labels are the truth
    params = _scene(fitted, means)
    new, stats = relabel_unsupported(params, label_votes(params, views))
    cls = new["logits"].argmax(1).numpy()
    assert (cls[spurious] == SKIN).all()  # the five 'mouth' Gaussians no view backs
    assert (cls[truth == NOSE] == NOSE).all()  # a part the views back stays
    assert cls[-1] == EAR  # unseen: no evidence either way, its class stays
    assert stats["relabelled"] == len(spurious) and stats["by_class"] == {"mouth": len(spurious)}
    # only the two logits are swapped; the input is not modified
    i = spurious[0]
    assert torch.equal(torch.sort(new["logits"][i]).values, torch.sort(params["logits"][i]).values)
    assert params["logits"][i].argmax() == MOUTH and new["means"] is params["means"]


def test_uniform_label_noise_raises_the_floor_without_touching_backed_classes():
    """50% of every view's pixels random: each wrong class gets ~2.6% of a Gaussian's votes, the
    noise floor rises with it, and no Gaussian whose class the views back is changed, while the
    unsupported ones still are (all but at most one of five: with ~19 px of votes per Gaussian the
    noise can give one of them a share above the floor), whether the isolated pixels' votes count
    in the shares or not."""
    means, truth, fitted, spurious = _world()
    params = _scene(fitted, means)
    clean_stats = relabel_unsupported(params, label_votes(params, _views(_scene(truth, means))))[1]
    backed = np.ones(len(means), bool)
    backed[spurious] = False
    backed[-1] = False
    for seed in (0, 3, 4):
        votes = label_votes(params, _views(_scene(truth, means), noise=0.5, seed=seed))
        # most noise pixels have no neighbour of their class: a third of the votes are isolated
        assert 0.25 < float(votes.isolated.sum() / votes.all.sum()) < 0.5
        for drop in (False, True):
            new, stats = relabel_unsupported(params, votes, SupportConfig(drop_isolated=drop))
            # seen-ness and the floor count every pixel, isolated or not
            assert stats["noise_floor"] > 10 * clean_stats["noise_floor"] + 1e-3, (seed, drop)
            assert stats["threshold"] > SupportConfig().min_share
            cls = new["logits"].argmax(1).numpy()
            assert (cls[backed] == fitted[backed]).all(), (seed, drop)
            assert (cls[spurious] == SKIN).sum() >= len(spurious) - 1 and (cls[spurious] != SKIN).sum() == (
                cls[spurious] == MOUTH).sum(), (seed, drop)


def test_no_labels_no_change():
    means, truth, fitted, _ = _world()
    params = _scene(fitted, means)
    data = _views(params)
    data.labels = None
    new, stats = relabel_unsupported(params, label_votes(params, data))
    assert stats["relabelled"] == 0 and stats["seen_fraction"] == 0.0
    assert torch.equal(new["logits"], params["logits"])


def test_isolated_pixels_are_the_labelled_pixels_with_no_neighbour_of_their_class():
    lab = torch.zeros(12, 12, dtype=torch.long)  # background
    lab[2, 1:9] = MOUTH  # a 1-px horizontal line: every pixel has a neighbour on it
    for k in range(5):
        lab[4 + k, 2 + k] = NOSE  # a 1-px diagonal line: 8-connected
    lab[9, 9] = EAR  # a lone pixel
    lab[10, 2] = EAR  # a lone pixel beside an ignored one
    lab[10, 3] = 255
    lab[0, 11] = 255  # ignored pixels are never isolated, even alone
    iso = isolated_pixels(lab, LS.num_classes)
    assert iso.dtype == torch.bool and iso.shape == lab.shape
    assert {tuple(p) for p in torch.nonzero(iso).tolist()} == {(9, 9), (10, 2)}
    lab[9, 10] = EAR  # a pair is a part, not impulse noise
    assert {tuple(p) for p in torch.nonzero(isolated_pixels(lab, LS.num_classes)).tolist()} == {(10, 2)}


def _pixel(mean: np.ndarray, view: int) -> tuple[int, int]:
    """(row, column) of the pixel holding ``mean``'s projection in view ``view`` (pixel centres at +0.5)."""
    vms, Ks = _cameras()
    x = vms[view, :3, :3].numpy() @ mean + vms[view, :3, 3].numpy()
    u, v = (Ks[view, :2, :2].numpy() @ (x[:2] / x[2])) + Ks[view, :2, 2].numpy()
    return int(np.floor(v)), int(np.floor(u))


def test_scattered_single_pixels_back_no_class_while_a_one_pixel_line_does():
    """'Mouth' pixels added to clean views, once as a 1-px line over a row of Gaussians the fit made
    'mouth', once as nine lone dots over each of five Gaussians the fit made 'mouth': the line backs
    its Gaussians either way; the dots (impulse noise: no neighbour of their class) back theirs
    only with ``drop_isolated`` off."""
    means, truth, _, spurious = _world()
    clean = _views(_scene(truth, means))
    row = np.nonzero((np.abs(means[:, 1] - means[spurious[2], 1]) < 1e-6) & (truth == SKIN)
                     & (np.abs(means[:, 0]) < 0.1) & (means[:, 2] < 1.05))[0]
    row = row[~np.isin(row, spurious)]
    dots, line = clean.labels.clone(), clean.labels.clone()
    for v in range(3):
        n_dots = 0
        for i in spurious:
            r, c = _pixel(means[i], v)
            for dr in (-3, 0, 3):
                for dc in (-3, 0, 3):
                    dots[v, r + dr, c + dc] = MOUTH
                    n_dots += 1
        r, c0 = _pixel(means[row.min()], v)
        c1 = _pixel(means[row.max()], v)[1]
        line[v, r, c0 - 3:c1 + 4] = MOUTH  # over the end Gaussians' footprints (sigma 2.6 px)
        assert isolated_pixels(dots[v], LS.num_classes).sum() == n_dots
        assert not isolated_pixels(line[v], LS.num_classes).any()
    fitted = truth.copy()
    fitted[spurious] = MOUTH
    fitted[row] = MOUTH
    params = _scene(fitted, means)
    clean.labels = dots
    v_dots = label_votes(params, clean)
    clean.labels = line
    v_line = label_votes(params, clean)
    assert float(v_line.isolated.sum()) == 0.0 and float(v_dots.isolated[spurious, MOUTH].sum()) > 0.0
    for drop in (True, False):
        cfg = SupportConfig(drop_isolated=drop)
        kept = relabel_unsupported(params, v_dots, cfg)[0]["logits"].argmax(1).numpy()
        assert (kept[spurious] == (SKIN if drop else MOUTH)).all(), drop
        kept = relabel_unsupported(params, v_line, cfg)[0]["logits"].argmax(1).numpy()
        assert (kept[row] == MOUTH).all(), drop
