"""Augmentation and the single-process training loop on a tiny hand-made data set."""

import numpy as np
import pytest
import torch

from facegs.core import cameras as C
from facegs.core.imageio import write_labels, write_rgb
from facegs.core.labels import IGNORE_INDEX, get_label_set
from facegs.core.manifest import SubjectManifest, View, save_manifest
from facegs.parser.bisenet import BiSeNet
from facegs.train.augment import AugmentConfig, augment, hflip, random_affine
from facegs.train.data import ParsingDataset, collect_views
from facegs.train.loop import TrainConfig, infinite_batches, poly_lr, train_loop
from facegs.train.losses import ParserLossConfig

CANON = get_label_set()


def blob_image(rng, size=64):
    """An image whose label is readable from colour: a 'face' of skin with two eyes."""
    lab = np.zeros((size, size), np.uint8)
    cy, cx = rng.integers(size // 3, 2 * size // 3, size=2)
    yy, xx = np.mgrid[:size, :size]
    lab[(yy - cy) ** 2 + (xx - cx) ** 2 < (size // 4) ** 2] = CANON.index("skin")
    lab[(yy - cy + 4) ** 2 + (xx - cx - 6) ** 2 < 9] = CANON.index("l_eye")  # subject's left: image right
    lab[(yy - cy + 4) ** 2 + (xx - cx + 6) ** 2 < 9] = CANON.index("r_eye")
    rgb = CANON.palette[lab].astype(np.int16) + rng.integers(-20, 20, size=(size, size, 3))
    return np.clip(rgb, 0, 255).astype(np.uint8), lab


def write_subject(root, sid, rng, n=6, size=64):
    (root / "images").mkdir(parents=True)
    (root / "gt_labels").mkdir()
    views = []
    for i in range(n):
        rgb, lab = blob_image(rng, size)
        write_rgb(root / f"images/v{i}.png", rgb)
        write_labels(root / f"gt_labels/v{i}.png", lab)
        yaw = [-80, -40, -10, 10, 40, 80][i % 6]
        views.append(View(view_id=f"v{i}", image=f"images/v{i}.png", width=size, height=size,
                          K=C.intrinsics_from_fov(size, size, 30), world_to_camera=C.head_pose_to_w2c(yaw, 0, 0, 2),
                          gt_labels=f"gt_labels/v{i}.png", pose={"yaw": float(yaw), "pitch": 0.0, "roll": 0.0}))
    save_manifest(SubjectManifest(sid, "celebamask19", tuple(views), root=root))


def test_hflip_swaps_left_and_right():
    rgb, lab = blob_image(np.random.default_rng(0))
    frgb, flab = hflip(rgb, lab)
    assert np.array_equal(frgb, rgb[:, ::-1])
    assert (flab == CANON.index("l_eye")).sum() == (lab == CANON.index("r_eye")).sum()
    xs = np.nonzero(flab == CANON.index("l_eye"))[1].mean(), np.nonzero(flab == CANON.index("r_eye"))[1].mean()
    assert xs[0] > xs[1]  # after flip+swap the subject's left eye is still on the image right


def test_affine_moves_image_and_labels_together():
    rng = np.random.default_rng(1)
    rgb, lab = blob_image(rng, 96)
    cfg = AugmentConfig(out_size=64, scale=(0.8, 1.2), max_rotation_deg=20)
    for seed in range(5):
        r2, l2 = random_affine(rgb, lab, np.random.default_rng(seed), cfg)
        assert r2.shape == (64, 64, 3) and l2.shape == (64, 64)
        inside = (l2 != IGNORE_INDEX) & (l2 != 0)
        # colour of each labelled pixel still matches its class palette (nearest-class check)
        pal = CANON.palette.astype(np.int32)
        d = ((r2[inside].astype(np.int32)[:, None, :] - pal[None]) ** 2).sum(-1)
        agree = (d.argmin(1) == l2[inside]).mean()
        assert agree > 0.85, agree
    r3, l3 = augment(rgb, lab, np.random.default_rng(3), cfg)
    r4, l4 = augment(rgb, lab, np.random.default_rng(3), cfg)
    assert np.array_equal(r3, r4) and np.array_equal(l3, l4)


def test_poly_lr_schedule():
    cfg = TrainConfig(steps=100, lr=0.01, warmup_steps=10)
    assert poly_lr(0, cfg) == pytest.approx(0.001)
    assert poly_lr(10, cfg) == pytest.approx(0.01 * 0.9 ** 0.9)
    assert poly_lr(100, cfg) == 0.0


def test_collect_views_filters_pose(tmp_path):
    write_subject(tmp_path / "s0", "s0", np.random.default_rng(0))
    assert len(collect_views([tmp_path])) == 6
    assert {round(abs(v.yaw)) for v in collect_views([tmp_path], max_abs_yaw=30)} == {10}


@pytest.mark.parametrize("consensus_weight", [0.0, 0.5])
def test_training_loss_falls(tmp_path, consensus_weight):
    torch.manual_seed(0)
    write_subject(tmp_path / "s0", "s0", np.random.default_rng(0), n=12)
    items = collect_views([tmp_path])
    ds = ParsingDataset(items, 64, AugmentConfig(out_size=64, max_rotation_deg=5), seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_size=6, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    model = BiSeNet(19, width=0.125)
    cfg = TrainConfig(steps=40, batch_size=6, lr=0.02, warmup_steps=5,
                      loss=ParserLossConfig(consensus_weight=consensus_weight))
    hist = train_loop(model, infinite_batches(loader), cfg, progress=False)
    first, last = np.mean([h["loss"] for h in hist[:5]]), np.mean([h["loss"] for h in hist[-5:]])
    assert last < 0.6 * first, (first, last)
    if consensus_weight:
        assert "consensus" in hist[0]


class PositionAwareParser:
    """A stand-in parser that is exactly flip-consistent: eye-coloured pixels on the image's right
    half are the subject's left eye (a correct parser's behaviour on any image, flipped or not)."""

    def predict_logits(self, rgb):
        rgb = np.asarray(rgb)
        B, H, W, _ = rgb.shape
        logits = np.full((B, 19, H, W), -10.0, np.float32)
        eye = (np.abs(rgb.astype(int) - CANON.palette[CANON.index("l_eye")]).sum(-1) < 60)
        right = np.arange(W)[None, None, :] >= W / 2
        cls = np.where(eye & right, CANON.index("l_eye"), np.where(eye, CANON.index("r_eye"), 0))
        np.put_along_axis(logits, cls[:, None], 10.0, axis=1)
        return torch.from_numpy(logits)


def test_flip_tta_swaps_left_and_right_back():
    from facegs.parser.predict import predict_probs

    rgb, lab = blob_image(np.random.default_rng(4))
    rgb[lab == CANON.index("r_eye")] = CANON.palette[CANON.index("l_eye")]  # both eyes look alike
    parser = PositionAwareParser()
    direct = predict_probs(parser, rgb[None])
    tta = predict_probs(parser, rgb[None], flip_tta=True)
    assert torch.equal(direct.argmax(1), tta.argmax(1))
    eyes = torch.from_numpy(lab[None] == CANON.index("l_eye"))
    assert tta[:, CANON.index("l_eye")][eyes].min() > 0.99  # without the swap it would be ~0.5


def test_label_cli_with_a_parser_checkpoint(tmp_path):
    from facegs.cli.app import main as facegs_main
    from facegs.core.imageio import read_confidence, read_labels
    from facegs.core.manifest import load_manifest
    from facegs.parser.checkpoint import save_parser

    write_subject(tmp_path / "s0", "s0", np.random.default_rng(0), n=3)
    ckpt = tmp_path / "p.pt"
    save_parser(ckpt, BiSeNet(19, width=0.125).eval(), width=0.125, input_size=(64, 64))
    assert facegs_main(["label", str(tmp_path), "--parser", str(ckpt), "--flip-tta", "--batch-size", "2"]) == 0
    m = load_manifest(tmp_path / "s0")
    assert all(v.labels == f"labels/{v.view_id}.png" and v.confidence for v in m.views)
    for v in m.views:
        assert read_labels(m.path(v.labels)).shape == (64, 64)
        c = read_confidence(m.path(v.confidence))
        assert 0.0 < c.min() <= c.max() <= 1.0
    assert m.source["labelling"]["flip_tta"] is True
    assert not [p for p in (tmp_path / "s0").iterdir() if p.name.startswith(".")]  # no temp folders left


class PaletteParser:
    """Predicts the class whose palette colour is nearest: exact on blob_image data."""

    def predict_logits(self, rgb):
        rgb = np.asarray(rgb).astype(np.int32)
        d = ((rgb[:, :, :, None, :] - CANON.palette.astype(np.int32)[None, None, None]) ** 2).sum(-1)
        return torch.from_numpy(-d.transpose(0, 3, 1, 2).astype(np.float32))


def test_evaluate_parser_scores_and_bins_every_view(tmp_path):
    from facegs.evaluate.parser import evaluate_parser

    write_subject(tmp_path / "s0", "s0", np.random.default_rng(0), n=6)
    s = evaluate_parser(PaletteParser(), collect_views([tmp_path]), batch_size=4, progress=False).summary()
    assert s["overall"]["n_images"] == 6 and s["overall"]["pixel_acc"] > 0.98
    assert s["overall"]["group_f1"]["eyes"] > 0.95
    assert [b["n_images"] for b in s["yaw"]] == [2, 2, 0, 2]  # |yaw| 10, 40, 80
