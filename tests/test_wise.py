"""WiSE-FT weight interpolation of a base and a fine-tuned parser, alpha chosen on frontal views,
and the ``facegs parser interpolate`` / ``export`` commands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from facegs.cli.app import main as facegs_main
from facegs.evaluate.compare import evaluate_checkpoints
from facegs.evaluate.testsets import load_test_items
from facegs.evaluate.wise import choose_alpha, overall_mean_f1
from facegs.parser.bisenet import BiSeNet
from facegs.parser.checkpoint import load_parser, save_parser
from facegs.synth.generate import generate_subject
from facegs.train.wise import interpolate_parsers, interpolate_state_dicts

torch.set_num_threads(1)
SIZE = 64


def _net(seed: int, width: float = 0.125) -> BiSeNet:
    torch.manual_seed(seed)
    net = BiSeNet(19, width)
    with torch.no_grad():  # distinct BatchNorm statistics too
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.9, 1.1)
    return net.eval()


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("wise")
    save_parser(d / "base.pt", _net(0), input_size=(SIZE, SIZE))
    save_parser(d / "ft.pt", _net(1), input_size=(SIZE, SIZE))
    return d / "base.pt", d / "ft.pt"


@pytest.fixture(scope="module")
def val_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wise_val")
    generate_subject(root, "v0", 5, rig="nersemble", res=SIZE, background="plain")
    return root


def test_state_dict_interpolation_endpoints_midpoint_and_buffers():
    b, f = _net(0).state_dict(), _net(1).state_dict()
    for k, v in interpolate_state_dicts(b, f, 0.0).items():
        assert torch.equal(v, b[k] if torch.is_floating_point(v) else f[k]), k
    one = interpolate_state_dicts(b, f, 1.0)
    assert all(torch.equal(one[k], f[k]) for k in f)
    mid = interpolate_state_dicts(b, f, 0.5)
    k = next(k for k in b if k.endswith("running_mean"))
    assert torch.allclose(mid[k], (b[k] + f[k]) / 2)
    ints = interpolate_state_dicts({"w": torch.zeros(2), "n": torch.tensor(1)}, {"w": torch.ones(2),
                                                                                   "n": torch.tensor(7)}, 0.5)
    assert int(ints["n"]) == 7 and torch.equal(ints["w"], torch.full((2,), 0.5))  # integers from the fine-tuned
    with pytest.raises(ValueError, match="alpha must be in"):
        interpolate_state_dicts(b, f, 1.5)
    with pytest.raises(ValueError, match="shape"):
        interpolate_state_dicts(b, _net(1, width=0.25).state_dict(), 0.5)
    with pytest.raises(ValueError, match="different parameters"):
        interpolate_state_dicts(b, {k: v for k, v in f.items() if "ffm" not in k}, 0.5)


def test_interpolated_parser_matches_its_endpoints(ckpts):
    base, ft = load_parser(ckpts[0]), load_parser(ckpts[1])
    x = np.random.default_rng(0).integers(0, 256, (2, SIZE, SIZE, 3)).astype(np.uint8)
    assert torch.allclose(interpolate_parsers(base, ft, 0.0).raw_logits(x), base.raw_logits(x), atol=1e-5)
    assert torch.allclose(interpolate_parsers(base, ft, 1.0).raw_logits(x), ft.raw_logits(x), atol=1e-5)
    mid = interpolate_parsers(base, ft, 0.5)
    assert mid.meta["wise_alpha"] == 0.5 and not torch.allclose(mid.raw_logits(x), ft.raw_logits(x))
    assert base.module.state_dict()["cp.arm16.conv.conv.weight"].data_ptr() != \
        mid.module.state_dict()["cp.arm16.conv.conv.weight"].data_ptr()  # a copy: inputs untouched


def test_choose_alpha_keeps_frontal_accuracy_within_the_allowed_drop(ckpts, val_dir):
    base, ft = load_parser(ckpts[0]), load_parser(ckpts[1])
    items = load_test_items(val_dir)
    alpha, table = choose_alpha(base, ft, items, max_drop=1.0)
    assert [r["alpha"] for r in table] == [round(0.1 * i, 2) for i in range(11)]
    direct = evaluate_checkpoints({"base": base}, items, progress=False, pitch_bins=None)
    assert table[0]["mean_f1"] == pytest.approx(overall_mean_f1(direct, "base"))
    floor = table[0]["mean_f1"] - 1.0
    assert next(r for r in table if r["alpha"] == alpha)["mean_f1"] >= floor
    assert all(r["mean_f1"] < floor for r in table if r["alpha"] > alpha)  # the largest admissible one
    a_any, _ = choose_alpha(base, ft, items, max_drop=1e9, alphas=(0.3, 0.7))
    assert a_any == 0.7
    best, _ = choose_alpha(base, ft, items, max_drop=1.0, rule="best")
    top = max(r["mean_f1"] for r in table if r["mean_f1"] >= floor)
    assert best == min(r["alpha"] for r in table if r["mean_f1"] == top)  # the highest validation F1
    with pytest.raises(ValueError, match="rule"):
        choose_alpha(base, ft, items, rule="median")
    with pytest.raises(ValueError, match="max_drop"):
        choose_alpha(base, ft, items, max_drop=-1)


def test_interpolate_and_export_commands(ckpts, val_dir, tmp_path, capsys):
    out = tmp_path / "wise.pt"
    assert facegs_main(["parser", "interpolate", "--base", str(ckpts[0]), "--finetuned", str(ckpts[1]), "--out",
                        str(out), "--alpha", "0.25"]) == 0
    info = load_parser(out).meta["extra"]["wise_ft"]
    assert info["alpha"] == 0.25 and len(info["base_sha256"]) == 64 and info["finetuned"] == str(ckpts[1])
    out2 = tmp_path / "chosen.pt"
    assert facegs_main(["parser", "interpolate", "--base", str(ckpts[0]), "--finetuned", str(ckpts[1]), "--out",
                        str(out2), "--val", str(val_dir), "--max-drop", "1.0"]) == 0
    printed = capsys.readouterr().out
    assert "<- chosen" in printed and "mean F1 on --val" in printed
    info2 = load_parser(out2).meta["extra"]["wise_ft"]
    assert len(info2["table"]) == 11 and info2["val_views"] == 16 and json.dumps(info2)
    assert facegs_main(["parser", "interpolate", "--base", str(ckpts[0]), "--finetuned", str(ckpts[1]), "--out",
                        str(tmp_path / "x.pt"), "--alpha", "1.5"]) == 2
    assert "--alpha must be in [0, 1]" in capsys.readouterr().err
    other = tmp_path / "other.pt"
    save_parser(other, _net(2, width=0.25), input_size=(SIZE, SIZE))
    assert facegs_main(["parser", "interpolate", "--base", str(ckpts[0]), "--finetuned", str(other), "--out",
                        str(tmp_path / "y.pt"), "--alpha", "0.5"]) == 2
    assert "shape" in capsys.readouterr().err and not (tmp_path / "y.pt").exists()
    ts = tmp_path / "p.ts"
    assert facegs_main(["parser", "export", "--parser", str(out), "--out", str(ts)]) == 0
    x = np.zeros((1, SIZE, SIZE, 3), np.uint8)
    assert np.array_equal(load_parser(ts).predict_labels(x), load_parser(out).predict_labels(x))


def test_wise_alpha_benchmark_matches_choose_alpha_and_endpoints(ckpts, val_dir, tmp_path):
    import importlib.util
    spec = importlib.util.spec_from_file_location("wise_alpha", Path(__file__).parents[1] / "bench" / "wise_alpha.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "w.json"
    assert mod.main(["--base", str(ckpts[0]), "--finetuned", str(ckpts[1]), "--sets", str(val_dir),
                     "--alphas", "0.5", "--out", str(out), "--no-flip-tta"]) == 0
    doc = json.loads(out.read_text())
    rows = doc["sets"][str(val_dir)]["rows"]
    assert [r["alpha"] for r in rows] == [0.0, 0.5, 1.0]
    _, table = choose_alpha(load_parser(ckpts[0]), load_parser(ckpts[1]), load_test_items(val_dir), alphas=(0.5, 1.0))
    assert [r["mean_f1"] for r in rows] == [round(r["mean_f1"], 2) for r in table]
    subj = doc["sets"][str(val_dir)]["frontal_per_subject"]
    assert list(subj) == ["v0"] and subj["v0"]["views"] >= 1
