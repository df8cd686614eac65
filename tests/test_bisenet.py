"""BiSeNet face parser: reference key/shape layout, checkpoint formats, TorchScript, label mapping."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from facegs.core.errors import InputError
from facegs.core.labels import LabelSet, get_label_set
from facegs.parser.bisenet import BiSeNet, count_trainable_parameters, expected_state_shapes
from facegs.parser.checkpoint import export_torchscript, load_parser, save_parser
from facegs.parser.model import MISSING_LOGIT, ParserModel, to_canonical_logits
from facegs.parser.normalize import IMAGENET_MEAN, IMAGENET_STD, normalize_rgb
from facegs.parser.state_dict import CheckpointMismatchError, load_bisenet_state_dict

# torch.jit (TorchScript) is deprecated upstream but remains the portable export format here
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")

TABLE_NAME = "bisenet_celebamask19_state_dict.txt"
FIXTURE_TABLE = Path(__file__).parent / "data" / TABLE_NAME
SHARED_TABLE = Path(__file__).resolve().parents[2] / "shared" / "reference" / TABLE_NAME


def _table_path() -> Path:
    for p in (FIXTURE_TABLE, SHARED_TABLE):
        if p.is_file():
            return p
    pytest.skip(f"reference table {TABLE_NAME} not found")


def _parse_table(path: Path) -> dict[str, tuple[int, ...]]:
    """Lines ``key [d0, d1, ...]``; ``#`` lines are comments."""
    table: dict[str, tuple[int, ...]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"(\S+)\s+\[([\d,\s]*)\]", line)
        assert m, f"unparsable table line: {line!r}"
        table[m.group(1)] = tuple(int(d) for d in m.group(2).split(",") if d.strip())
    return table


@pytest.fixture(scope="module")
def table() -> dict[str, tuple[int, ...]]:
    return _parse_table(_table_path())


def _random_state(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, shape in shapes.items():
        t = torch.randn(shape, generator=g)
        out[k] = t.abs() + 0.5 if k.endswith("running_var") else t
    return out


def _rgb(b: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(b, h, w, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------
# layout
# ---------------------------------------------------------------------------------------------


def test_fixture_table_matches_shared_reference():
    if not (FIXTURE_TABLE.is_file() and SHARED_TABLE.is_file()):
        pytest.skip("need both the fixture and ../shared copies")
    assert _parse_table(FIXTURE_TABLE) == _parse_table(SHARED_TABLE)


def test_state_dict_keys_and_shapes_equal_reference_table(table):
    assert len(table) == 160
    trainable_in_table = sum(int(np.prod(s)) for k, s in table.items() if not k.endswith(("running_mean", "running_var")))
    assert trainable_in_table == 13_300_416

    model = BiSeNet()
    sd = model.state_dict()
    got = {k: tuple(v.shape) for k, v in sd.items()}
    assert sorted(set(got) - set(table)) == [] and sorted(set(table) - set(got)) == []
    assert got == table
    assert list(got) == list(table)  # same order as the published file, too
    assert count_trainable_parameters(model) == 13_300_416
    assert sum(v.numel() for v in sd.values()) == 13_313_088
    assert expected_state_shapes() == table
    assert all(m.bias is None for m in model.modules() if isinstance(m, torch.nn.Conv2d))


def test_reference_layout_file_loads_strict_and_tensors_equal(table, tmp_path):
    ref = _random_state(table)
    on_disk = {}
    for k, v in ref.items():  # DataParallel prefix + older torch's BatchNorm counters
        on_disk["module." + k] = v
        if k.endswith("running_var"):
            on_disk["module." + k.replace("running_var", "num_batches_tracked")] = torch.tensor(79999)
    assert len(on_disk) == 191
    path = tmp_path / "79999_iter.pth"
    torch.save(on_disk, path, _use_new_zipfile_serialization=False)  # the 2019 file predates zip archives

    sd = load_bisenet_state_dict(path)
    assert set(sd) == set(table)
    model = BiSeNet()
    result = model.load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for k, v in model.state_dict().items():
        assert torch.equal(v, ref[k]), k

    # the model itself also accepts the counters with strict=True (they are dropped on load)
    with_counters = {k[len("module.") :]: v for k, v in on_disk.items()}
    BiSeNet().load_state_dict(with_counters, strict=True)

    # wrappers and load_parser's bare-state_dict branch
    assert set(load_bisenet_state_dict({"params": on_disk})) == set(table)
    pm = load_parser(path)
    assert pm.label_set == "celebamask19" and pm.input_size == (512, 512)
    assert pm.meta["source"] == "bisenet_state_dict" and pm.meta["width"] == 1.0
    for k, v in pm.module.state_dict().items():
        assert torch.equal(v, ref[k]), k


def test_mismatching_state_dict_error_names_offending_keys(tmp_path):
    shapes = expected_state_shapes(19, 0.25)
    sd = _random_state(shapes)
    del sd["ffm.conv1.weight"]
    sd["cp.spatial.extra.weight"] = torch.zeros(3)
    sd["conv_out.conv_out.weight"] = torch.zeros(19, 7, 1, 1)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointMismatchError) as ei:
        load_bisenet_state_dict(path, width=0.25)
    err = ei.value
    msg = str(err)
    for name in ("ffm.conv1.weight", "cp.spatial.extra.weight", "conv_out.conv_out.weight", "[19, 7, 1, 1]", str(path)):
        assert name in msg
    assert err.missing == ["ffm.conv1.weight"]
    assert err.unexpected == ["cp.spatial.extra.weight"]
    assert [m[0] for m in err.mismatched] == ["conv_out.conv_out.weight"]
    with pytest.raises(CheckpointMismatchError, match="ffm.conv1.weight"):
        load_parser(path)
    # a width-0.25 dict is not the published (width 1) layout: many shape mismatches, named
    with pytest.raises(CheckpointMismatchError, match=r"shape mismatches: cp\.resnet\.conv1\.weight"):
        load_bisenet_state_dict(_random_state(shapes))
    with pytest.raises(InputError, match="wrapper"):
        load_bisenet_state_dict({"optimizer": {"lr": 0.1}})


# ---------------------------------------------------------------------------------------------
# forward
# ---------------------------------------------------------------------------------------------


def test_three_heads_shapes_small_width():
    torch.manual_seed(0)
    model = BiSeNet(19, width=0.25)
    assert model.cp.resnet.channels == (16, 32, 64, 128)
    x = torch.randn(2, 3, 128, 128)
    outs = model(x)  # training mode: batch statistics
    assert isinstance(outs, tuple) and len(outs) == 3
    assert [tuple(o.shape) for o in outs] == [(2, 19, 128, 128)] * 3
    model.eval()
    with torch.no_grad():
        main, aux16, aux32 = model(x)
        assert torch.allclose(model.forward_main(x), main, atol=1e-6)
        assert not torch.allclose(main, aux16)
        # sizes not divisible by 32 work too
        odd = model(torch.randn(1, 3, 50, 70))
    assert [tuple(o.shape) for o in odd] == [(1, 19, 50, 70)] * 3


def test_full_model_forward_64():
    model = BiSeNet().eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(1, 19, 64, 64)] * 3
    assert all(torch.isfinite(o).all() for o in outs)


def test_normalize_rgb_layouts_and_values():
    rgb = _rgb(2, 5, 4)
    a = normalize_rgb(rgb)  # [B,H,W,3] uint8
    b = normalize_rgb(torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 255.0)  # [B,3,H,W] float
    assert a.shape == (2, 3, 5, 4) and a.dtype == torch.float32
    assert torch.allclose(a, b, atol=1e-6)
    white = normalize_rgb(np.full((1, 2, 2, 3), 255, np.uint8))
    expected = [(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]
    assert torch.allclose(white[0, :, 0, 0], torch.tensor(expected), atol=1e-6)
    with pytest.raises(ValueError, match="ambiguous"):
        normalize_rgb(torch.zeros(1, 3, 4, 3))
    assert normalize_rgb(torch.zeros(1, 3, 4, 3), channels_last=False).shape == (1, 3, 4, 3)


# ---------------------------------------------------------------------------------------------
# facegs checkpoint
# ---------------------------------------------------------------------------------------------


def _small_model(n_classes: int = 19, seed: int = 0) -> BiSeNet:
    torch.manual_seed(seed)
    model = BiSeNet(n_classes, width=0.25)
    model.load_state_dict(_random_state(expected_state_shapes(n_classes, 0.25), seed))  # non-trivial BN stats
    return model.eval()


def test_own_checkpoint_reloads_bit_identically(tmp_path):
    model = _small_model()
    path = tmp_path / "ckpt" / "parser.pt"
    meta = save_parser(path, model, width=0.25, input_size=(64, 64), extra_meta={"run": "t1", "epoch": 3})
    assert sorted(p.name for p in path.parent.iterdir()) == ["parser.pt"]  # no temporary left over

    raw = torch.load(path, map_location="cpu", weights_only=True)  # no custom classes pickled
    assert raw["format"] == "facegs.parser" and raw["meta"] == meta
    assert meta["arch"] == "bisenet" and meta["width"] == 0.25 and meta["n_classes"] == 19
    assert meta["label_set"] == "celebamask19" and meta["input_size"] == [64, 64]
    assert meta["normalization"]["mean"] == list(IMAGENET_MEAN) and meta["extra"] == {"run": "t1", "epoch": 3}
    assert "facegs_version" in meta

    pm = load_parser(path)
    assert isinstance(pm, ParserModel) and pm.meta["source"] == "facegs" and pm.input_size == (64, 64)
    sd0, sd1 = model.state_dict(), pm.module.state_dict()
    assert list(sd0) == list(sd1)
    assert all(torch.equal(sd0[k], sd1[k]) for k in sd0)

    rgb = _rgb(2, 64, 64)
    with torch.no_grad():
        ref = model.forward_main(normalize_rgb(rgb))
    got = pm.predict_logits(rgb)
    assert got.shape == (2, 19, 64, 64) and torch.equal(got, ref)
    assert pm.predict_labels(rgb).shape == (2, 64, 64)
    # other image sizes are resized to the model's input size and back
    assert pm.predict_logits(_rgb(1, 80, 48)).shape == (1, 19, 80, 48)

    with pytest.raises(ValueError, match="width"):
        save_parser(tmp_path / "w.pt", model, width=1.0)
    with pytest.raises(ValueError, match="JSON"):
        save_parser(tmp_path / "j.pt", model, extra_meta={"bad": object()})
    with pytest.raises(InputError, match="label_set"):
        load_parser(path, label_set="farl")


# ---------------------------------------------------------------------------------------------
# TorchScript and label mapping
# ---------------------------------------------------------------------------------------------

# canonical class c  ->  its index in the official CelebAMask-HQ order
HQ_INDEX_OF_CANONICAL = [0, 1, 6, 7, 4, 5, 3, 8, 9, 15, 2, 10, 11, 12, 17, 16, 18, 13, 14]


def test_torchscript_export_same_logits_and_declared_label_set_permutes(tmp_path):
    model = _small_model()
    path = tmp_path / "parser.ts"
    scripted = export_torchscript(model, path, example_size=(1, 3, 64, 64), input_size=None)
    assert not model.training  # caller's model untouched
    x = torch.randn(2, 3, 96, 64)
    loaded = torch.jit.load(str(path))
    with torch.no_grad():
        ref = model.forward_main(x)
        assert torch.allclose(scripted(x), ref, atol=1e-5)
        assert torch.allclose(loaded(x), ref, atol=1e-5)

    # embedded metadata: no declaration needed, canonical order unchanged
    pm = load_parser(path)
    assert pm.label_set == "celebamask19" and pm.input_size is None and pm.meta["source"] == "torchscript"
    rgb = _rgb(1, 64, 64)
    with torch.no_grad():
        eager = model.forward_main(normalize_rgb(rgb))
    assert torch.allclose(pm.predict_logits(rgb), eager, atol=1e-5)

    # declare that the same outputs are in the official CelebAMask-HQ order
    hq = get_label_set("celebamask_hq")
    canon = get_label_set("celebamask19")
    assert HQ_INDEX_OF_CANONICAL == [hq.index(n) for n in canon.classes]
    pm_hq = load_parser(path, label_set="celebamask_hq")
    raw = pm_hq.raw_logits(rgb)
    mapped = pm_hq.predict_logits(rgb)
    assert mapped.shape == (1, 19, 64, 64)
    assert torch.equal(mapped, raw[:, HQ_INDEX_OF_CANONICAL])
    assert torch.equal(mapped[:, canon.index("nose")], raw[:, 2])  # nose: canonical 10 <- official 2
    assert torch.equal(mapped[:, canon.index("hair")], raw[:, 13])  # hair: canonical 17 <- official 13


def test_foreign_torchscript_lapa11_needs_declaration_and_fills_missing(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 11, kernel_size=1)  # a stand-in 11-class LaPa parser, no facegs metadata
    path = tmp_path / "lapa.ts"
    torch.jit.save(torch.jit.trace(net, torch.randn(1, 3, 8, 8)), str(path))
    with pytest.raises(InputError, match="label_set"):
        load_parser(path)
    pm = load_parser(path, label_set="lapa11", input_size=(16, 16), normalization="unit")
    rgb = _rgb(1, 32, 24)
    raw = pm.raw_logits(rgb)
    assert raw.shape == (1, 11, 32, 24)
    mapped = pm.predict_logits(rgb)
    lapa, canon = get_label_set("lapa11"), get_label_set("celebamask19")
    for c, name in enumerate(canon.classes):
        if name in lapa.classes:
            assert torch.equal(mapped[:, c], raw[:, lapa.index(name)]), name
        else:
            assert torch.all(mapped[:, c] == MISSING_LOGIT), name
    missing = {n for n in canon.classes if n not in lapa.classes}
    assert missing == {"eye_g", "l_ear", "r_ear", "ear_r", "neck", "neck_l", "cloth", "hat"}
    assert int(pm.predict_labels(rgb).max()) < 19


def test_to_canonical_logits_merges_with_logsumexp():
    canon = get_label_set("celebamask19")
    split_hair = LabelSet(
        name="split_hair",
        version=1,
        classes=("background", "face", "hair_front", "hair_back"),
        palette=np.zeros((4, 3), np.uint8),
        flip_pairs=(),
        to_canonical={"background": "background", "face": "skin", "hair_front": "hair", "hair_back": "hair"},
    )
    logits = torch.randn(2, 4, 3, 5)
    out = to_canonical_logits(logits, split_hair)
    assert out.shape == (2, 19, 3, 5)
    assert torch.equal(out[:, canon.index("skin")], logits[:, 1])
    assert torch.allclose(out[:, canon.index("hair")], torch.logsumexp(logits[:, 2:4], dim=1))
    assert torch.all(out[:, canon.index("nose")] == MISSING_LOGIT)
    probs = out.softmax(dim=1)
    assert torch.allclose(probs[:, canon.index("hair")], logits.softmax(dim=1)[:, 2:4].sum(dim=1), atol=1e-6)
