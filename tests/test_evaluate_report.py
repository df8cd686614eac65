"""ray_jobs.evaluate and facegs.evaluate.report: synthetic grid test set, checkpoints compared by pose,
metrics.json / report.md / plots / rating contact sheet, and flat CelebAMask-HQ-style sets."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from facegs.core.imageio import read_labels, write_labels
from facegs.core.labels import CANONICAL, get_label_set, remap
from facegs.evaluate.compare import evaluate_checkpoints
from facegs.evaluate.tables import summary_table
from facegs.evaluate.testsets import load_test_items, make_test_set, read_canonical_labels
from facegs.parser.bisenet import BiSeNet
from facegs.parser.checkpoint import save_parser
from ray_jobs.evaluate import main

torch.set_num_threads(1)

YAWS = [-90, -45, 0, 45, 90]


def _ckpt(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    save_parser(path, BiSeNet(19, width=0.125).eval(), width=0.125, input_size=(64, 64))
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalreport")
    ck = {"base": _ckpt(root / "base.pt", 0), "same": _ckpt(root / "same.pt", 0), "other": _ckpt(root / "other.pt", 1)}
    test, out = root / "test", root / "report"
    rc = main(["--ckpt", f"base={ck['base']}", "--ckpt", f"same={ck['same']}", "--ckpt", f"other={ck['other']}",
               "--test-set", str(test), "--make-synthetic", "2", "--seed", "3", "--res", "64",
               "--yaws=-90,-45,0,45,90", "--pitches", "0", "--background", "plain",
               "--out", str(out), "--no-progress", "--batch-size", "4"])
    assert rc == 0
    return {"root": root, "ck": ck, "test": test, "out": out}


def _leaves(d, path=""):
    """(path, value) of every number/None leaf of a nested dict/list."""
    if isinstance(d, dict):
        for k, v in d.items():
            yield from _leaves(v, f"{path}.{k}")
    elif isinstance(d, list):
        for i, v in enumerate(d):
            yield from _leaves(v, f"{path}[{i}]")
    else:
        yield path, d


def test_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--ckpt", "--test-set", "--make-synthetic", "--label-set", "--base", "--flip-tta", "--device"):
        assert flag in text


def test_outputs_and_metrics_json(env):
    out = env["out"]
    for f in ("metrics.json", "report.md", "f1_vs_yaw.png", "group_f1_vs_yaw.png", "contact_sheet.html", "per_view.csv"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    assert sorted(p.name for p in env["test"].iterdir()) == ["test_0000", "test_0001", "test_set.json"]
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["base"] == "base" and list(doc["summaries"]) == ["base", "same", "other"]
    assert doc["test_set"]["n_views"] == 10 and doc["test_set"]["n_subjects"] == 2
    s = doc["summaries"]["base"]
    assert [(b["lo"], b["hi"]) for b in s["yaw"]] == [(0, 30), (30, 60), (60, 75), (75, 90)]
    assert sum(b["n_images"] for b in s["yaw"]) == 10 and s["overall"]["n_images"] == 10
    assert s["yaw"][3]["n_images"] == 4  # the +-90 rig views of both subjects
    # identical weights: every delta is exactly 0 (or undefined where the bin is empty)
    leaves = list(_leaves(doc["deltas"]["same"])) + list(_leaves(doc["extreme_deltas"]["same"]))
    bin_keys = (".lo", ".hi", ".n_images")
    nums = [v for p, v in leaves if isinstance(v, float) and not p.endswith(bin_keys)]
    assert nums and all(v == 0.0 for v in nums)
    assert all(v == 0.0 for p, v in _leaves(doc["deltas"]["base"]) if isinstance(v, float) and not p.endswith(bin_keys))
    # other weights: deltas are the difference of the summaries, bin by bin
    d, so = doc["deltas"]["other"], doc["summaries"]["other"]
    for i, b in enumerate(d["yaw"]):
        if so["yaw"][i]["mean_f1"] is not None:
            assert b["mean_f1"] == pytest.approx(so["yaw"][i]["mean_f1"] - s["yaw"][i]["mean_f1"])
    assert d["overall"]["pixel_acc"] != 0.0
    assert doc["extreme"]["base"]["lo"] == 60 and doc["extreme"]["base"]["n_images"] == 4
    # the stored states rebuild the evaluators
    from facegs.evaluate.metrics import PoseBinnedEvaluator

    ev = PoseBinnedEvaluator.from_state_dict(doc["states"]["other"])
    assert ev.summary()["overall"]["miou"] == pytest.approx(so["overall"]["miou"])


def test_report_md(env):
    md = (env["out"] / "report.md").read_text()
    assert re.search(r"\| checkpoint +\| 0-30 \(n=\d+\) +\| 30-60 \(n=\d+\) +\| 60-75 \(n=\d+\) +\| 75-90", md)
    assert "mIoU" in md and "pixel acc" in md
    for name in ("base", "same", "other"):
        assert f"| {name} " in md
    assert "Δ same − base" in md and "Δ other − base" in md
    assert "Class-group F1" in md and re.search(r"\|\s+eyes\s+\|\s+brows\s+\|\s+nose\s+\|\s+mouth\s+\|\s+ears\s+\|"
                                                r"\s+skin\s+\|\s+hair\s+\|", md)
    assert "contact_sheet.html" in md and "f1_vs_yaw.png" in md
    table = summary_table(evaluate_checkpoints({"base": env["ck"]["base"]},
                                                   load_test_items(env["test"])[:2], progress=False))
    assert table.startswith("Mean F1") and len(table.splitlines()) < 30
    res = evaluate_checkpoints({"b": env["ck"]["base"]}, load_test_items(env["test"])[:2], flip_tta=True,
                                 progress=False)
    assert res.flip_tta and res["b"].summary()["overall"]["n_images"] == 2 and len(res.per_view["b"]) == 2


def test_contact_sheet(env):
    out = env["out"]
    doc = (out / "contact_sheet.html").read_text()
    srcs = re.findall(r'<img src="([^"]+)"', doc)
    assert srcs and all(not s.startswith(("/", "http")) and (out / s).is_file() for s in srcs)
    rows = re.findall(r'<tr data-row="\d+"', doc)
    assert len(srcs) == len(rows) * (2 + 3)  # RGB, GT and one overlay per checkpoint
    assert "Extreme poses" in doc and "Near-frontal reference" in doc
    assert "<script>" in doc and "exportRatings" in doc and "facegs.ratings" in doc
    assert doc.count('type="radio"') == len(rows) * 3 * 5
    assert not re.search(r'(src|href)="(https?:)?//', doc)  # no external resources
    assert "mIoU" in doc and "yaw +" in doc


def test_flat_celebamask_hq_dir(env, tmp_path, capsys):
    # a hand-made map in CelebAMask-HQ's own order lands on the canonical classes
    hq = get_label_set("celebamask_hq")
    canon = get_label_set(CANONICAL)
    names = ["background", "l_eye", "nose", "l_brow", "hair", "u_lip"]
    hand = np.array([[hq.index(n) for n in names]], dtype=np.uint8)
    flat = tmp_path / "flat"
    (flat / "images").mkdir(parents=True)
    (flat / "labels").mkdir()
    write_labels(flat / "labels" / "hand.png", hand, "celebamask_hq")
    shutil.copy(next((env["test"] / "test_0000" / "images").iterdir()), flat / "images" / "hand.png")
    it = [i for i in load_test_items(flat, label_set="celebamask_hq") if i.view_id == "hand"][0]
    assert it.label_set == "celebamask_hq" and math.isnan(it.yaw)
    got = read_canonical_labels(it)[0].tolist()
    assert got == [canon.index(n) for n in names]
    assert hq.index("nose") != canon.index("nose")  # the remap is not the identity
    (flat / "labels" / "hand.png").unlink()
    (flat / "images" / "hand.png").unlink()

    # the synthetic views as a flat CelebAMask-HQ-style set: evaluating it gives the same confusion matrix
    for sd in sorted(env["test"].glob("test_0*")):
        for img in sorted((sd / "images").iterdir()):
            stem = f"{sd.name}_{img.stem}"
            shutil.copy(img, flat / "images" / f"{stem}.png")
            gt = read_labels(sd / "gt_labels" / img.name)
            write_labels(flat / "labels" / f"{stem}.png", remap(gt, CANONICAL, "celebamask_hq"), "celebamask_hq")
    out = tmp_path / "rep"
    args = ["--ckpt", f"base={env['ck']['base']}", "--ckpt", f"other={env['ck']['other']}", "--test-set", str(flat),
            "--out", str(out), "--no-progress"]
    assert main(args) == 2  # a flat directory needs its label set declared
    assert "--label-set" in capsys.readouterr().err
    assert main(args + ["--label-set", "celebamask_hq"]) == 0
    doc = json.loads((out / "metrics.json").read_text())
    ref = json.loads((env["out"] / "metrics.json").read_text())
    for n in ("base", "other"):
        assert doc["states"][n]["overall"]["confusion"] == ref["states"][n]["overall"]["confusion"]
        assert all(b["n_images"] == 0 for b in doc["summaries"][n]["yaw"])
    assert doc["test_set"]["n_unknown_pose"] == 10
    assert (out / "contact_sheet.html").is_file() and not (out / "f1_vs_yaw.png").exists()
    assert "no known pose" in (out / "report.md").read_text()

    # poses.csv gives poses to a flat set
    (flat / "poses.csv").write_text("name,yaw,pitch\ntest_0000_cam_000.png,-80,5\ntest_0000_cam_001,-40.5,0\n")
    items = {i.view_id: i for i in load_test_items(flat, "celebamask_hq")}
    assert (items["test_0000_cam_000"].yaw, items["test_0000_cam_001"].yaw) == (-80.0, -40.5)
    assert math.isnan(items["test_0001_cam_000"].yaw)


def test_errors(env, tmp_path, capsys):
    ck = env["ck"]
    missing = tmp_path / "nope.pt"
    rc = main(["--ckpt", f"base={ck['base']}", "--ckpt", f"ft={missing}", "--test-set", str(env["test"]),
               "--out", str(tmp_path / "o")])
    assert rc == 2 and "'ft'" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "images").mkdir()
    (tmp_path / "empty" / "labels").mkdir()
    rc = main(["--ckpt", str(ck["base"]), "--test-set", str(tmp_path / "empty"), "--label-set", "celebamask19",
               "--out", str(tmp_path / "o")])
    assert rc == 2 and "empty" in capsys.readouterr().err
    rc = main(["--ckpt", str(ck["base"]), "--test-set", str(tmp_path / "absent"), "--out", str(tmp_path / "o")])
    assert rc == 2 and "does not exist" in capsys.readouterr().err
    rc = main(["--ckpt", f"a={ck['base']}", "--ckpt", f"a={ck['same']}", "--test-set", str(env["test"]),
               "--out", str(tmp_path / "o")])
    assert rc == 2 and "twice" in capsys.readouterr().err
    rc = main(["--ckpt", f"a={ck['base']}", "--base", "zz", "--test-set", str(env["test"]), "--out", str(tmp_path / "o")])
    assert rc == 2 and "--base" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    rc = main(["--ckpt", f"broken={bad}", "--test-set", str(env["test"]), "--out", str(tmp_path / "o")])
    assert rc == 2 and "'broken'" in capsys.readouterr().err


def test_make_test_set_resume_and_mismatch(env):
    test = env["test"]
    before = (test / "test_0000" / "subject.json").stat().st_mtime_ns
    dirs = make_test_set(test, 2, seed=3, res=64, yaws=YAWS, pitches=[0], background="plain")
    assert [d.name for d in dirs] == ["test_0000", "test_0001"]
    assert (test / "test_0000" / "subject.json").stat().st_mtime_ns == before  # kept, not re-rendered
    with pytest.raises(ValueError, match="other settings"):
        make_test_set(test, 2, seed=4, res=64, yaws=YAWS, pitches=[0], background="plain")
