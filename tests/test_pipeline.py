"""The EM pipeline end to end on a local Ray: factory -> Ray Train fine-tuning -> evaluation report."""

from __future__ import annotations

import json

import pytest

from facegs.parser.bisenet import BiSeNet
from facegs.parser.checkpoint import load_parser, save_parser
from facegs.synth.generate import generate_subject

# the test preset skips the fit's final evaluation; turn it on for the label-quality numbers
FACTORY_ARGS = "--factory-args=--no-progress --fit-overrides '{\"eval_at_end\": true}'"


@pytest.mark.slow
def test_pipeline_one_round_end_to_end(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    subjects = tmp_path / "subjects"
    for i, seed in enumerate((10, 11)):
        generate_subject(subjects, f"g{i}", seed, rig="nersemble", res=64, background="plain")
    base = tmp_path / "base.pt"
    save_parser(base, BiSeNet(n_classes=19, width=0.125), input_size=(64, 64))
    from ray_jobs import pipeline

    out = tmp_path / "run"
    rc = pipeline.main(["--subjects", str(subjects), "--parser", str(base), "--out", str(out), "--rounds", "1",
                        "--first-labels", "noise:pixel:0.3", "--make-test", "1", "--test-res", "64",
                        "--preset", "test", "--steps", "80", "--renders", "6", FACTORY_ARGS,
                        "--workers", "2", "--epochs", "2", "--epoch-length", "8", "--batch-size", "4",
                        "--size", "64", "--num-cpus", "2"])
    assert rc == 0
    doc = json.loads((out / "pipeline.json").read_text())
    (r1,) = doc["rounds"]
    assert r1["samples"] == 12 and r1["subjects_complete"] == 2 and r1["labels_from"] == "noise:pixel:0.3"
    # the fine-tuned parser is a facegs checkpoint that differs from the base
    ft = load_parser(out / "round1" / "parser.pt")
    b = load_parser(base)
    sd_ft, sd_b = ft.module.state_dict(), b.module.state_dict()
    assert any(not (sd_ft[k] == sd_b[k]).all() for k in sd_b if sd_b[k].is_floating_point())
    assert (out / "report" / "report.md").read_text().count("round1") >= 1
    assert (out / "report" / "f1_vs_yaw.png").is_file() and (out / "report" / "contact_sheet.html").is_file()
    assert "yaw" in r1["eval"] and doc["test_views"] > 0
    record = json.loads((out / "round1" / "parser.inputs.json").read_text())
    assert record["n_shards"] == 2 and len(record["fingerprint"]) == 16
    # rerun: everything is reused (complete subjects skipped, checkpoint reused: the same inputs);
    # WiSE-FT on top
    ft_args = ["--workers", "2", "--epochs", "2", "--epoch-length", "8", "--batch-size", "4", "--size", "64"]
    ft_bytes = (out / "round1" / "parser.pt").read_bytes()
    rc = pipeline.main(["--subjects", str(subjects), "--parser", str(base), "--out", str(out), "--rounds", "1",
                        "--first-labels", "noise:pixel:0.3", "--test-set", str(out / "test_set"),
                        "--preset", "test", "--steps", "80", "--renders", "6", FACTORY_ARGS, *ft_args,
                        "--num-cpus", "2", "--wise-max-drop", "1", "--wise-rule", "best",
                        "--wise-val-subjects", "1", "--test-res", "64"])
    assert rc == 0
    assert (out / "round1" / "parser.pt").read_bytes() == ft_bytes
    assert json.loads((out / "round1" / "parser.inputs.json").read_text()) == record
    (w1,) = json.loads((out / "pipeline.json").read_text())["rounds"]
    wise = w1["wise_ft"]
    assert w1["parser"] == str(out / "round1" / "parser_wise.pt") and w1["finetuned"] == str(out / "round1" / "parser.pt")
    assert wise["val_views"] == 21 and [r["alpha"] for r in wise["table"]] == [round(0.1 * i, 2) for i in range(11)]
    top = max(r["mean_f1"] for r in wise["table"] if r["mean_f1"] >= wise["table"][0]["mean_f1"] - 1.0)
    assert wise["alpha"] == min(r["alpha"] for r in wise["table"] if r["mean_f1"] == top)
    meta = load_parser(out / "round1" / "parser_wise.pt").meta["extra"]["wise_ft"]
    assert meta["alpha"] == wise["alpha"] and meta["rule"] == "best" and meta["max_drop"] == 1.0
    s = json.loads((out / "round1" / "dataset" / "summary.json").read_text())
    assert s["subjects_skipped"] == 2 and s["subjects_done"] == 0
    # the refined labels' agreement with ground truth comes from the done markers: the same on a rerun
    q = json.loads((out / "pipeline.json").read_text())["rounds"][0]["label_quality"]
    assert q == r1["label_quality"] and q["label_acc_gt"] is not None and 0.0 < q["label_acc_gt"] <= 1.0

    # other fine-tuning inputs (one epoch): the stale checkpoint is not reused, nor its WiSE-FT file
    # (this run asks for none); the log says why, and the record holds the new inputs
    rc = pipeline.main(["--subjects", str(subjects), "--parser", str(base), "--out", str(out), "--rounds", "1",
                        "--first-labels", "noise:pixel:0.3", "--test-set", str(out / "test_set"),
                        "--preset", "test", "--steps", "80", "--renders", "6", FACTORY_ARGS,
                        *ft_args[:3], "1", *ft_args[4:],
                        "--num-cpus", "2", "--test-res", "64"])
    assert rc == 0
    assert "parser.pt was trained on other inputs (changed: finetune): training it again" in capfd.readouterr().out
    new = json.loads((out / "round1" / "parser.inputs.json").read_text())
    assert new["finetune"]["epochs"] == 1 and new["fingerprint"] != record["fingerprint"]
    assert new["shards_sha256"] == record["shards_sha256"] and new["init_sha256"] == record["init_sha256"]
    assert (out / "round1" / "parser.pt").read_bytes() != ft_bytes
    assert not (out / "round1" / "parser_wise.pt").exists()
    assert json.loads((out / "pipeline.json").read_text())["rounds"][0]["parser"] == str(out / "round1" / "parser.pt")
