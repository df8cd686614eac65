import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from facegs.train import losses as L

IGN = 255


def _slow_ohem(logits, target, thresh, min_kept, ignore_index=IGN, weight=None):
    """Loop/sort reference following the BiSeNet OhemCELoss text, ignored pixels dropped."""
    ce, ws = [], []
    for b in range(target.shape[0]):
        for i in range(target.shape[1]):
            for j in range(target.shape[2]):
                t = int(target[b, i, j])
                w = 1.0 if weight is None else float(weight[b, i, j])
                if t == ignore_index or w <= 0:
                    continue
                ce.append(float(-torch.log_softmax(logits[b, :, i, j].double(), 0)[t]))
                ws.append(w)
    ce, ws = np.array(ce), np.array(ws)
    order = np.argsort(-ce, kind="stable")
    ce, ws = ce[order], ws[order]
    k = min(min_kept, len(ce))
    n_hard = int((ce > -math.log(thresh)).sum()) if thresh < 1 else len(ce)
    n = max(n_hard, k)
    return float((ce[:n] * ws[:n]).sum() / max(n, 1))


def _slow_consensus(logits, target, alpha, beta, ignore_index=IGN):
    """Loop-over-blobs reference (scipy labelling, 8-connectivity)."""
    p = torch.softmax(logits.double(), 1)
    terms = []
    for b in range(target.shape[0]):
        t = target[b].numpy()
        for c in np.unique(t):
            if c == ignore_index:
                continue
            comp, n = ndimage.label(t == c, structure=np.ones((3, 3)))
            for k in range(1, n + 1):
                m = torch.from_numpy(comp == k)
                pb = p[b][:, m].T  # [n, C]
                mean = pb.mean(0)
                nll = -torch.log(mean[c])
                kl = (pb * (pb.clamp_min(1e-300).log() - mean.log())).sum(1).mean()
                terms.append(alpha * nll + beta * kl)
    return float(torch.stack(terms).mean())


def test_ohem_equals_plain_ce_when_thresh_is_one():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 6, 7, generator=g)
    target = torch.randint(0, 5, (2, 6, 7), generator=g)
    target[0, :2] = IGN
    got = L.ohem_cross_entropy(logits, target, thresh=1.0, min_kept=0)
    ref = F.cross_entropy(logits, target, ignore_index=IGN)
    assert torch.allclose(got, ref, atol=1e-6)


def test_ohem_keeps_at_least_min_kept():
    # confident correct predictions everywhere: no pixel is hard, min_kept hardest ones are kept
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    logits = torch.zeros(1, 3, 4, 4)
    logits[:, 0] = 10.0
    logits[0, 0, 0, 0] = 2.0  # the two hardest (still correct) pixels
    logits[0, 0, 1, 1] = 3.0
    ce = F.cross_entropy(logits, target, reduction="none")[0]
    got = L.ohem_cross_entropy(logits, target, thresh=0.7, min_kept=2)
    assert torch.allclose(got, (ce[0, 0] + ce[1, 1]) / 2)
    # min_kept larger than the number of valid pixels: all valid pixels, ignored ones excluded
    target2 = target.clone()
    target2[0, 3] = IGN
    got2 = L.ohem_cross_entropy(logits, target2, thresh=0.7, min_kept=100)
    assert torch.allclose(got2, ce[:3].mean())


def test_ohem_matches_slow_reference_on_random_inputs():
    g = torch.Generator().manual_seed(1)
    for trial in range(4):
        logits = torch.randn(2, 4, 5, 6, generator=g) * 3
        target = torch.randint(0, 4, (2, 5, 6), generator=g)
        target[torch.rand(2, 5, 6, generator=g) < 0.2] = IGN
        weight = torch.rand(2, 5, 6, generator=g) if trial % 2 else None
        for thresh, mk in [(0.7, 5), (0.3, 40), (0.9, 0), (1.0, 3)]:
            got = float(L.ohem_cross_entropy(logits, target, thresh, mk, weight=weight))
            assert got == pytest.approx(_slow_ohem(logits, target, thresh, mk, weight=weight), rel=1e-5)


def test_ohem_default_min_kept_and_all_ignored():
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    target = torch.full((2, 8, 8), IGN, dtype=torch.long)
    loss = L.ohem_cross_entropy(logits, target)
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.all(logits.grad == 0)


def test_blob_ids_on_hand_made_map():
    t = torch.tensor([[[0, 0, 1, 1], [0, 0, 255, 1], [2, 0, 0, 1], [0, 2, 0, 1]]])
    ids, cls = L.blob_ids(t, connectivity=4)
    # class 0: 4-connectivity gives {(0,0),(0,1),(1,0),(1,1),(2,1),(2,2),(3,2)} and {(3,0)}
    # class 1: one blob; class 2: two blobs with 4-connectivity
    assert sorted(cls.tolist()) == [0, 0, 1, 2, 2]
    assert ids[0, 1, 2] == -1
    assert ids[0, 3, 0] != ids[0, 0, 0]
    ids8, cls8 = L.blob_ids(t, connectivity=8)  # diagonals join: class 0 one blob, class 2 one blob
    assert sorted(cls8.tolist()) == [0, 1, 2]
    assert torch.all(cls8[ids8[ids8 >= 0]] == t[ids8 >= 0])


def test_consensus_kl_zero_when_blob_predictions_agree():
    target = torch.tensor([[[0, 0, 1], [0, 0, 1]]])
    base = torch.tensor([0.3, -1.0, 2.0])
    logits = torch.zeros(1, 3, 2, 3)
    logits[0, :, :, :2] = base[:, None, None]  # every pixel of the class-0 blob identical
    logits[0, :, :, 2] = torch.tensor([-0.5, 1.5, 0.0])[:, None]
    nll, kl, nb = L.consensus_terms(logits, target)
    assert nb == 2
    assert abs(float(kl)) < 1e-7


def test_consensus_nll_matches_hand_computation_on_two_blobs():
    # blob A (class 0): two pixels with p = (0.9, 0.1) and (0.5, 0.5): mean p_0 = 0.7
    # blob B (class 1): one pixel with p = (0.2, 0.8)
    target = torch.tensor([[[0, 0, 1]]])
    probs = torch.tensor([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8]])
    logits = probs.log().T.reshape(1, 2, 1, 3)
    nll, kl, nb = L.consensus_terms(logits, target)
    assert nb == 2
    assert float(nll) == pytest.approx((-math.log(0.7) - math.log(0.8)) / 2, rel=1e-5)
    m = torch.tensor([0.7, 0.3])
    kl_a = ((probs[0] * (probs[0] / m).log()).sum() + (probs[1] * (probs[1] / m).log()).sum()) / 2
    assert float(kl) == pytest.approx(float(kl_a) / 2, rel=1e-5)  # blob B's KL is 0
    loss = L.consensus_loss(logits, target, alpha=10.0, beta=5.0)
    assert float(loss) == pytest.approx(10 * float(nll) + 5 * float(kl), rel=1e-6)


def test_consensus_falls_when_blob_predictions_become_uniform_with_same_mean():
    target = torch.zeros(1, 1, 4, dtype=torch.long)
    varied = torch.tensor([[0.9, 0.1], [0.5, 0.5], [0.7, 0.3], [0.7, 0.3]])
    same = torch.tensor([[0.7, 0.3]] * 4)  # same blob mean (0.7, 0.3)
    to_logits = lambda p: p.log().T.reshape(1, 2, 1, 4)  # noqa: E731
    l_varied = L.consensus_loss(to_logits(varied), target)
    l_same = L.consensus_loss(to_logits(same), target)
    assert float(l_same) < float(l_varied)
    assert float(l_same) == pytest.approx(-10 * math.log(0.7), rel=1e-5)


def test_consensus_ignores_ignore_pixels():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(1, 3, 4, 5, generator=g)
    target = torch.randint(0, 3, (1, 4, 5), generator=g)
    target[0, :, 4] = IGN
    a = L.consensus_loss(logits, target)
    logits2 = logits.clone()
    logits2[0, :, :, 4] = torch.randn(3, 4, generator=g) * 10  # change predictions on ignored pixels only
    assert torch.allclose(a, L.consensus_loss(logits2, target))
    # and ignoring column 4 equals dropping it
    assert torch.allclose(a, L.consensus_loss(logits[..., :4], target[..., :4]))


def test_consensus_matches_slow_loop_reference_and_gradients_finite():
    g = torch.Generator().manual_seed(4)
    for _ in range(3):
        logits = (torch.randn(2, 4, 9, 11, generator=g) * 4).requires_grad_(True)
        target = torch.randint(0, 4, (2, 9, 11), generator=g)
        target[torch.rand(2, 9, 11, generator=g) < 0.1] = IGN
        loss = L.consensus_loss(logits, target, alpha=10.0, beta=5.0)
        assert float(loss.detach()) == pytest.approx(_slow_consensus(logits.detach(), target, 10.0, 5.0), rel=1e-4)
        loss.backward()
        assert torch.isfinite(logits.grad).all()
    # extreme logits (saturated softmax) still give finite values and gradients
    logits = torch.zeros(1, 3, 3, 3)
    logits[:, 0] = 200.0
    logits.requires_grad_(True)
    target = torch.ones(1, 3, 3, dtype=torch.long)
    loss = L.consensus_loss(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    assert float(loss.detach()) == pytest.approx(10 * 200.0, rel=1e-4)  # -log p_1 = 200, KL = 0
    assert logits.grad[0, 1].sum() < 0  # still pushes the true class up


def test_total_parser_loss_three_heads_and_consensus():
    g = torch.Generator().manual_seed(5)
    target = torch.randint(0, 4, (2, 16, 16), generator=g)
    main = torch.randn(2, 4, 16, 16, generator=g, requires_grad=True)
    aux16 = torch.randn(2, 4, 8, 8, generator=g, requires_grad=True)  # upsampled to 16x16
    aux32 = torch.randn(2, 4, 16, 16, generator=g, requires_grad=True)
    loss, parts = L.total_parser_loss((main, aux16, aux32), target, {"consensus_weight": 0.5})
    assert set(parts) == {"ohem_main", "ohem_aux16", "ohem_aux32", "consensus", "total"}
    expect = parts["ohem_main"] + parts["ohem_aux16"] + parts["ohem_aux32"] + 0.5 * parts["consensus"]
    assert torch.allclose(loss.detach(), expect)
    loss.backward()
    assert all(torch.isfinite(t.grad).all() for t in (main, aux16, aux32))
    loss2, parts2 = L.total_parser_loss((main,), target)
    assert set(parts2) == {"ohem_main", "total"}
    with pytest.raises(ValueError):
        L.total_parser_loss((main,), target, {"no_such_option": 1})


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_losses_on_cuda_match_cpu():
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(2, 5, 32, 32, generator=g)
    target = torch.randint(0, 5, (2, 32, 32), generator=g)
    for fn in (L.ohem_cross_entropy, L.consensus_loss):
        cpu = fn(logits, target)
        gpu = fn(logits.cuda(), target.cuda())
        assert float(gpu) == pytest.approx(float(cpu), rel=1e-4)
