"""Background replacement for renders and pose selection of shard samples: the optional alpha.png
member (written, read, mirrored), exact compositing with alpha, the label-mask fallback, procedural
and directory backgrounds, the training transform's seeded replacement, and |yaw| selection in the
stream and in the fine-tuning driver's checks."""

from __future__ import annotations

import dataclasses
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from test_shards import H, W, make_samples

from facegs.core.errors import InputError
from facegs.core.imageio import write_rgb
from facegs.shards.encode import Sample, encode_sample, member_order
from facegs.shards.manifest import merge_manifest, read_manifest
from facegs.shards.stages import decode_sample, hflip_sample, select_abs_yaw
from facegs.shards.stream import ShardDataset
from facegs.shards.writer import commit_subject
from facegs.train.backgrounds import (
    BackgroundConfig,
    BackgroundSampler,
    composite,
    image_background,
    list_background_images,
    procedural_background,
)
from facegs.train.shard_batches import ShardTrainTransform


def with_alpha(s: Sample) -> Sample:
    """The sample as a render: coverage 1 on labelled pixels, a soft edge, 0 elsewhere; RGB
    premultiplied over black."""
    alpha = (s.seg != 0).astype(np.float32)
    alpha[:, 0] = 0.25  # a partially covered column (8-bit exact: 0.25 * 255 is not an integer)
    rgb = np.rint(s.rgb.astype(np.float32) * alpha[..., None]).astype(np.uint8)
    return dataclasses.replace(s, rgb=rgb, alpha=alpha)


# ----------------------------------------------------------------------------------------------
# the alpha member
# ----------------------------------------------------------------------------------------------


def test_alpha_member_is_written_read_and_mirrored(tmp_path):
    plain = make_samples("subjA", 3)
    renders = [with_alpha(s) for s in plain]
    m = encode_sample(renders[0], "png")
    assert tuple(m) == member_order("png", alpha=True) == ("png", "seg.png", "conf.png", "ignore.png", "alpha.png",
                                                           "json")
    assert tuple(encode_sample(plain[0], "png")) == member_order("png")  # absent unless given
    root = tmp_path / "ds"
    commit_subject(renders, str(root), "subjA", rgb_format="png")
    commit_subject(make_samples("subjB", 2), str(root), "subjB", rgb_format="png")
    merge_manifest(str(root))
    got = {s["__key__"]: s for s in ShardDataset(str(root))}
    for s in renders:
        a = got[s.key]["alpha"]
        assert a.dtype == np.float32 and a.shape == (H, W)
        assert np.abs(a - s.alpha).max() <= 0.5 / 255 + 1e-7  # 8-bit quantised
    assert got["subjB_00000"]["alpha"] is None
    flipped = hflip_sample(got["subjA_00001"])
    assert np.array_equal(flipped["alpha"], got["subjA_00001"]["alpha"][:, ::-1])
    # the tar holds the members in order, alpha before json
    with tarfile.open(root / read_manifest(str(root)).column("shard").to_pylist()[0]) as tf:
        names = [n for n in tf.getnames() if n.startswith("subjA_00000.")]
    assert names == [f"subjA_00000.{f}" for f in member_order("png", alpha=True)]


def test_alpha_is_validated_and_a_bad_member_named():
    s = with_alpha(make_samples("subjA", 1)[0])
    with pytest.raises(InputError, match="field 'alpha'"):
        encode_sample(dataclasses.replace(s, alpha=s.alpha[:, :-1]))
    with pytest.raises(InputError, match="alpha must be finite and in"):
        encode_sample(dataclasses.replace(s, alpha=s.alpha * 2.0))
    raw = {"__key__": s.key, "__shard__": "x.tar", **encode_sample(s, "png")}
    raw["alpha.png"] = b"not a png"
    with pytest.raises(InputError, match="alpha"):
        decode_sample(raw)


# ----------------------------------------------------------------------------------------------
# compositing and background sources
# ----------------------------------------------------------------------------------------------


def test_composite_with_alpha_is_exact_and_without_uses_background_labels():
    rng = np.random.default_rng(0)
    fg = rng.integers(0, 256, (H, W, 3)).astype(np.float32)
    alpha = rng.random((H, W)).astype(np.float32)
    bg = rng.integers(0, 256, (H, W, 3)).astype(np.uint8)
    premult = np.rint(fg * alpha[..., None]).astype(np.uint8)  # what the rasterizer writes over black
    out = composite(premult, bg, alpha=alpha)
    want = fg * alpha[..., None] + (1 - alpha[..., None]) * bg
    assert out.dtype == np.uint8 and np.abs(out.astype(np.float32) - want).max() <= 1.0
    seg = np.zeros((H, W), np.uint8)
    seg[4:20, 4:28] = 1
    ignore = np.zeros((H, W), bool)
    ignore[0, :] = True
    rgb = np.full((H, W, 3), 7, np.uint8)
    out = composite(rgb, bg, seg=seg, ignore=ignore)
    replaced = (seg == 0) & ~ignore
    assert np.array_equal(out[replaced], bg[replaced]) and np.array_equal(out[~replaced], rgb[~replaced])
    with pytest.raises(ValueError, match="differ in size"):
        composite(rgb, bg[:, :-1], seg=seg)


def test_procedural_backgrounds_are_seeded_and_varied():
    a = procedural_background(48, 64, np.random.default_rng(1))
    assert a.shape == (48, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, procedural_background(48, 64, np.random.default_rng(1)))
    others = [procedural_background(48, 64, np.random.default_rng(i)) for i in range(2, 12)]
    assert all(not np.array_equal(a, o) for o in others)
    means = np.array([o.reshape(-1, 3).mean(0) for o in others])
    assert means.std(0).min() > 10  # colours vary between draws, not one palette
    assert np.mean([o.std() for o in others]) > 10  # and within an image: clutter, not flat fills


def test_directory_backgrounds_crop_and_fail_clearly(tmp_path):
    d = tmp_path / "bgs"
    (d / "sub").mkdir(parents=True)
    write_rgb(d / "a.png", np.full((40, 80, 3), (200, 10, 10), np.uint8))
    write_rgb(d / "sub" / "b.jpg", np.full((60, 30, 3), (10, 200, 10), np.uint8))
    (d / "notes.txt").write_text("not an image")
    files = list_background_images(d)
    assert [f.name for f in files] == ["a.png", "b.jpg"]
    out = image_background(files[0], 16, 24, np.random.default_rng(0))
    assert out.shape == (16, 24, 3) and abs(int(out[..., 0].mean()) - 200) <= 2
    sampler = BackgroundSampler(BackgroundConfig(1.0, str(d)))
    draws = {int(sampler.draw(8, 8, np.random.default_rng(i))[..., 1].mean() > 100) for i in range(20)}
    assert draws == {0, 1}  # both images get drawn
    with pytest.raises(InputError, match="no .*images in the background directory"):
        BackgroundSampler(BackgroundConfig(1.0, str(_empty(tmp_path))))
    with pytest.raises(InputError, match="background directory not found"):
        BackgroundSampler(BackgroundConfig(1.0, str(tmp_path / "missing")))
    (d / "broken.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(InputError, match="cannot decode background image.*broken.png"):
        image_background(d / "broken.png", 8, 8, np.random.default_rng(0))
    with pytest.raises(ValueError, match="probability"):
        BackgroundConfig(1.5)


def _empty(tmp_path: Path) -> Path:
    p = tmp_path / "empty"
    p.mkdir(exist_ok=True)
    return p


# ----------------------------------------------------------------------------------------------
# the training transform
# ----------------------------------------------------------------------------------------------


def _inner(mask: np.ndarray, size: int) -> np.ndarray:
    """A mask resized to the transform's square output (nearest) and eroded by one pixel, so that
    bilinear resizing cannot mix in pixels from across its edge."""
    import cv2

    m = cv2.resize(mask.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST)
    return cv2.erode(m, np.ones((3, 3), np.uint8)).astype(bool)


def _decoded(s: Sample, alpha: bool = True) -> dict:
    raw = {"__key__": s.key, "__shard__": "x.tar", **encode_sample(s if alpha else dataclasses.replace(s, alpha=None),
                                                                     "png")}
    return decode_sample(raw)


def _pixels(out: dict) -> np.ndarray:
    """Undo ImageNet normalisation: [S, S, 3] float in [0, 255]."""
    from facegs.parser.normalize import IMAGENET_MEAN, IMAGENET_STD

    img = out["image"].numpy().transpose(1, 2, 0)
    return (img * np.asarray(IMAGENET_STD) + np.asarray(IMAGENET_MEAN)) * 255.0


def test_transform_replaces_backgrounds_seeded_per_epoch_and_never_the_subject():
    s = with_alpha(make_samples("subjA", 1)[0])
    d = _decoded(s)
    plain = ShardTrainTransform(H, None)(d)
    t = ShardTrainTransform(H, None, seed=3, background=BackgroundConfig(1.0))
    a, b = t(d), t(d)
    assert np.array_equal(a["image"].numpy(), b["image"].numpy())  # same (seed, epoch, key): same draw
    assert np.array_equal(a["labels"].numpy(), plain["labels"].numpy())  # labels untouched
    fg, bgm = _inner(s.alpha == 1.0, H), _inner(s.alpha == 0.0, H)
    pa, pp = _pixels(a), _pixels(plain)
    assert np.abs(pa[fg] - pp[fg]).max() < 0.6  # the subject is unchanged (up to float rounding)
    assert np.abs(pa[bgm] - pp[bgm]).mean() > 20  # the black background is gone
    t.set_epoch(1)
    assert not np.array_equal(t(d)["image"].numpy(), a["image"].numpy())  # a new draw each epoch
    # without alpha the background-labelled pixels are replaced, the rest kept
    c = ShardTrainTransform(H, None, seed=3, background=BackgroundConfig(1.0))(_decoded(s, alpha=False))
    pc = _pixels(c)
    bgpix, kept = _inner((s.seg == 0) & ~s.ignore, H), _inner((s.seg != 0) | s.ignore, H)
    assert np.abs(pc[kept] - pp[kept]).max() < 0.6 and np.abs(pc[bgpix] - pp[bgpix]).mean() > 20
    # mixed-in (original, real-background) samples are never touched; prob 0 is a no-op
    mixed = dict(d, __source__="mix")
    assert np.array_equal(t(mixed)["image"].numpy(), ShardTrainTransform(H, None)(mixed)["image"].numpy())
    off = ShardTrainTransform(H, None, background=BackgroundConfig(0.0))(d)
    assert np.array_equal(off["image"].numpy(), plain["image"].numpy())


def test_transform_background_probability_is_respected():
    samples = [_decoded(with_alpha(x)) for x in make_samples("subjA", 40)]
    plain = ShardTrainTransform(H, None)
    t = ShardTrainTransform(H, None, seed=0, background=BackgroundConfig(0.5))
    changed = sum(not np.array_equal(t(d)["image"].numpy(), plain(d)["image"].numpy()) for d in samples)
    assert 10 <= changed <= 30


# ----------------------------------------------------------------------------------------------
# pose selection
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def posed(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("posed") / "ds"
    for subj, n in (("subjA", 9), ("subjB", 5)):
        commit_subject(make_samples(subj, n), str(root), subj, maxcount=3, rgb_format="png")
    merge_manifest(str(root))
    return root


def test_stream_selects_by_absolute_yaw(posed):
    every = list(ShardDataset(str(posed)))
    want = {s["__key__"] for s in every if 30 <= abs(s["meta"]["yaw"]) <= 70}
    assert 0 < len(want) < len(every)
    got = [s["__key__"] for s in ShardDataset(str(posed), abs_yaw_range=(30, 70))]
    assert sorted(got) == sorted(want)
    res = list(ShardDataset(str(posed), abs_yaw_range=(30, 70), resampled=True, epoch_length=25, seed=1))
    assert len(res) == 25 and {s["__key__"] for s in res} <= want  # the epoch length counts kept samples
    with pytest.raises(ValueError, match="abs_yaw_range"):
        ShardDataset(str(posed), abs_yaw_range=(50, 10))
    raws = [{"__key__": f"k{i}", "__shard__": "s.tar", "json": json.dumps({"yaw": 5.0}).encode()} for i in range(5)]
    with pytest.raises(InputError, match="5 samples in a row have .yaw. outside"):
        list(select_abs_yaw(iter(raws), 30, 90, max_rejected_in_a_row=5))
    with pytest.raises(InputError, match="k0.*cannot read yaw"):
        list(select_abs_yaw([{"__key__": "k0", "__shard__": "s.tar", "json": b"{}"}], 0, 90))


def test_finetune_driver_keeps_shards_that_can_hold_the_yaw_range(posed, tmp_path):
    from facegs.parser.bisenet import BiSeNet
    from facegs.parser.checkpoint import save_parser
    from facegs.train.finetune import FinetuneConfig, prepare, shards_in_yaw_range

    table = read_manifest(str(posed))
    keys_yaw = {s["__key__"]: s["meta"]["yaw"] for s in ShardDataset(str(posed))}
    for lo, hi in ((0, 90), (60, 90), (0, 20), (31, 44)):
        kept = set(shards_in_yaw_range(table, (lo, hi)))
        for row in table.to_pylist():
            has = any(lo <= abs(keys_yaw[k]) <= hi for k in row["keys"])
            assert not has or row["shard"] in kept, (lo, hi, row["shard"])  # never drops a shard it needs
    assert len(shards_in_yaw_range(table, (0, 90))) == table.num_rows
    ckpt = tmp_path / "init.pt"
    save_parser(ckpt, BiSeNet(19, 0.125), input_size=(32, 32))
    base = dict(shards=str(posed), init=str(ckpt), out=str(tmp_path / "o.pt"), storage_path=str(tmp_path / "r"),
                name="x", workers=1, epochs=1, epoch_length=8, batch_size=4, size=32)
    info = prepare(FinetuneConfig.from_any({**base, "abs_yaw_range": (75, 90)}))
    assert 0 < len(info["shards"]) < table.num_rows
    with pytest.raises(ValueError, match="no sample of the dataset has .yaw. in that range"):
        prepare(FinetuneConfig.from_any({**base, "shards": str(_single_yaw(tmp_path)), "abs_yaw_range": (60, 90)}))
    with pytest.raises(ValueError, match="--abs-yaw-range"):
        prepare(FinetuneConfig.from_any({**base, "abs_yaw_range": (60, 30)}))
    with pytest.raises(ValueError, match="--background-prob"):
        prepare(FinetuneConfig.from_any({**base, "background_prob": 2.0}))
    with pytest.raises(InputError, match="background directory not found"):
        prepare(FinetuneConfig.from_any({**base, "background_prob": 0.5, "backgrounds": str(tmp_path / "none")}))


def _single_yaw(tmp_path: Path) -> Path:
    root = tmp_path / "frontal"
    samples = make_samples("subjF", 2)
    for s in samples:
        s.meta["yaw"] = 3.0
    commit_subject(samples, str(root), "subjF", rgb_format="png")
    merge_manifest(str(root))
    return root


def test_alpha_roundtrip_bytes_are_deterministic(tmp_path):
    s = with_alpha(make_samples("subjA", 2)[1])
    a, b = encode_sample(s, "jpg"), encode_sample(s, "jpg")
    assert a == b
    assert io.BytesIO(a["alpha.png"]).read(8) == b"\x89PNG\r\n\x1a\n"
