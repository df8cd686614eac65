"""The dataset factory on a real local Ray: bad subjects, an actor killed mid-subject, a driver
killed mid-run and rerun (byte-identical shards), skipping of complete subjects."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from s3_server import S3Env, s3_fs, s3_server  # noqa: F401  (pytest fixtures)

from facegs.cli.app import main as facegs_main
from facegs.factory.config import FactoryConfig, config_hash
from facegs.factory.finalize import finalize
from facegs.factory.markers import complete_subjects
from facegs.factory.process import process_subject
from facegs.factory.sources import list_subject_urls
from facegs.shards.manifest import read_manifest
from facegs.shards.scan import find_orphans, list_committed
from facegs.synth.generate import generate_subject

REPO = Path(__file__).resolve().parents[1]
GOOD = ("g0", "g1")
# a 64 px, 16-view subject fits in a few seconds with these settings
ARGS = ["--labels", "noise:pixel:0.3", "--preset", "test", "--steps", "80", "--renders", "5", "--maxcount", "3",
        "--no-progress", "--cpus-per-actor", "1"]


def _edit(root: Path, fn) -> None:
    p = root / "subject.json"
    d = json.loads(p.read_text())
    fn(d)
    p.write_text(json.dumps(d))


@pytest.fixture(scope="module")
def subjects(tmp_path_factory) -> Path:
    """3 good synthetic subjects and 4 bad ones (corrupt image, missing camera, non-finite pose, too few views)."""
    root = tmp_path_factory.mktemp("factory") / "subjects"
    for i, sid in enumerate(GOOD):
        generate_subject(root, sid, 10 + i, rig="nersemble", res=64, background="plain")
    for sid in ("bad_image", "bad_camera", "bad_pose", "bad_views"):
        generate_subject(root, sid, 20, rig="nersemble", res=64, background="plain")
    first = sorted((root / "bad_image" / "images").iterdir())[2]
    first.write_bytes(b"\x89PNG\r\n\x1a\nnot a png" * 4)
    _edit(root / "bad_camera", lambda d: d["views"][1].pop("K"))
    _edit(root / "bad_pose", lambda d: d["views"][3]["world_to_camera"][0].__setitem__(2, float("nan")))
    _edit(root / "bad_views", lambda d: d.__setitem__("views", d["views"][:3]))
    return root


def good_list(subjects: Path, tmp: Path) -> str:
    p = tmp / "good.txt"
    p.write_text("# good subjects only\n" + "".join(f"{subjects / s}\n" for s in GOOD))
    return str(p)


def run_driver(args: list[str], timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled", "FACEGS_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "ray_jobs.build_dataset", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout, **kw)


def results_of(root: Path) -> dict[str, dict]:
    """The last run's per-subject rows (ROOT/results.parquet), by subject id."""
    return {r["subject_id"]: r for r in pq.read_table(root / "results.parquet").to_pylist()}


def shard_bytes(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / "shards").glob("*.tar"))}


def test_subject_list_file_and_directory(subjects, tmp_path):
    assert [Path(u).name for u in list_subject_urls(str(subjects))] == sorted(
        list(GOOD) + ["bad_camera", "bad_image", "bad_pose", "bad_views"])
    assert [Path(u).name for u in list_subject_urls(good_list(subjects, tmp_path))] == list(GOOD)


def test_config_rejects_bad_values():
    for bad in (dict(labels="parser"), dict(labels="weird:x"), dict(labels="noise:pixel:2"), dict(rgb_format="gif"),
                dict(fit_preset="huge"), dict(fit_overrides={"no_such_field": 1})):
        with pytest.raises((ValueError, KeyError, TypeError)):
            FactoryConfig(**bad)
    a, b = FactoryConfig(), FactoryConfig(n_renders=31)
    assert config_hash(a) != config_hash(b) and config_hash(a) == config_hash(FactoryConfig())
    assert config_hash(FactoryConfig(store_alpha=False)) != config_hash(a)  # other shard members
    import facegs.fit.config

    h0 = config_hash(a)
    facegs.fit.config.PRESETS["cpu_demo"] = {**facegs.fit.config.PRESETS["cpu_demo"], "steps": 599}
    try:  # a changed library default (not in the factory config itself) is a new config
        assert config_hash(FactoryConfig()) != h0
    finally:
        facegs.fit.config.PRESETS["cpu_demo"] = {**facegs.fit.config.PRESETS["cpu_demo"], "steps": 600}
    assert config_hash(FactoryConfig()) == h0
    p = FactoryConfig(labels="parser:/x/base.pt")
    assert config_hash(p, "aa" * 32) != config_hash(p, "bb" * 32)  # other weights, other config


@pytest.mark.slow
def test_factory_bad_subjects_and_killed_actor(subjects, tmp_path):
    """Bad subjects fail with a clear message; an actor killed after writing part of g1's shards is
    replaced and g1 redone; the manifest lists every good subject exactly once, nothing orphaned."""
    out = tmp_path / "ds"
    crash = json.dumps({"subject_id": "g1", "after_samples": 4, "attempt": 1})
    r = run_driver(["--subjects", str(subjects), "--out", str(out), "--num-cpus", "2", *ARGS,
                    "--crash-injection", crash])
    assert r.returncode == 1, r.stdout + r.stderr  # bad subjects failed for good
    s = json.loads((out / "summary.json").read_text())
    assert s["subjects_done"] == 2 and s["subjects_failed"] == 4 and s["actor_deaths"] == 1
    res = results_of(out)
    assert res["g1"]["attempts"] == 2 and res["g0"]["attempts"] == 1 and res["g0"]["status"] == "done"
    assert {k for k, v in res.items() if v["status"] == "failed"} == set(s["failures"])
    fails = s["failures"]
    assert "bad_image" in fails and "corrupt" in fails["bad_image"]["message"] and "image" in fails["bad_image"]["message"]
    assert "K" in fails["bad_camera"]["message"]
    assert "non-finite" in fails["bad_pose"]["message"] and "world_to_camera" in fails["bad_pose"]["message"]
    assert "only 3 views" in fails["bad_views"]["message"]
    assert all(f["attempts"] == 1 and f["error_type"] == "InputError" for f in fails.values())  # never retried
    assert {p.stem for p in (out / "failures").glob("*.json")} == set(fails)
    assert "FAILED bad_pose" in r.stdout + r.stderr
    # the manifest: each good subject once, 5 samples each, keys unique; nothing orphaned
    t = read_manifest(str(out)).to_pylist()
    keys = [k for row in t for k in row["keys"]]
    assert sorted(keys) == sorted(f"{g}_{i:05d}" for g in GOOD for i in range(5))
    assert {s for row in t for s in row["subjects"]} == set(GOOD)
    assert not find_orphans(str(out))
    assert set(complete_subjects(str(out))) == set(GOOD)
    assert {Path(r.shard).name for r in list_committed(str(out))} == set(shard_bytes(out))
    # the reference for the rerun test below
    shutil.copytree(out, subjects.parent / "reference_ds")


@pytest.mark.slow
def test_factory_driver_killed_then_rerun_is_byte_identical(subjects, tmp_path):
    ref = subjects.parent / "reference_ds"
    if not ref.exists():
        pytest.fail("needs test_factory_bad_subjects_and_killed_actor's output (run the module)")
    out = tmp_path / "ds"
    lst = good_list(subjects, tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled", "FACEGS_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "ray_jobs.build_dataset", "--subjects", lst, "--out", str(out),
                             "--num-cpus", "1", "--actors", "1", *ARGS], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not list((out / "subjects").glob("*.json")):
        assert proc.poll() is None, "driver ended before it could be killed"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started
    proc.wait()
    done_before = set(complete_subjects(str(out)))
    assert 1 <= len(done_before) < len(GOOD)
    r = run_driver(["--subjects", lst, "--out", str(out), "--num-cpus", "2", *ARGS])
    assert r.returncode == 0, r.stdout + r.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["subjects_skipped"] == len(done_before) and s["subjects_done"] == len(GOOD) - len(done_before)
    assert set(results_of(out)).isdisjoint(done_before)  # finished subjects were not redone
    assert shard_bytes(out) == shard_bytes(ref)
    assert read_manifest(str(out)).equals(read_manifest(str(ref)))
    assert not find_orphans(str(out))
    # a third run has nothing to do
    r = run_driver(["--subjects", lst, "--out", str(out), "--num-cpus", "1", *ARGS])
    assert r.returncode == 0 and "0 to do" in r.stdout


CFG = FactoryConfig(labels="noise:pixel:0.3", fit_preset="test", fit_overrides={"steps": 80}, n_renders=4, maxcount=2)


@pytest.fixture(scope="module")
def small_ds(subjects) -> Path:
    """g0 and g1 processed directly (no Ray): 4 samples each in 2 shards each; read-only."""
    out = subjects.parent / "small_ds"
    for sid in GOOD:
        process_subject(str(subjects / sid), str(out), CFG, chash=config_hash(CFG))
    finalize(str(out))
    return out


def test_process_subject_leaves_the_capture_untouched(subjects, small_ds):
    """Labelling happens on a staged copy: the user's subject keeps its own labels."""
    m = json.loads((subjects / "g0" / "subject.json").read_text())
    assert "labelling" not in m.get("source", {})
    assert set(complete_subjects(str(small_ds))) == set(GOOD)
    marker = json.loads((small_ds / "subjects" / "g0.json").read_text())
    assert marker["num_samples"] == 4 and [s["shard"] for s in marker["shards"]] == ["shards/g0-000000.tar",
                                                                                       "shards/g0-000001.tar"]


def test_done_marker_holds_quality_and_head_frame(small_ds):
    """Each subject's marker says how far it can be trusted, with no ground truth involved."""
    marker = json.loads((small_ds / "subjects" / "g0.json").read_text())
    q = marker["quality"]
    assert {"quality", "input_miou", "input_iou", "consensus_confidence", "consensus_margin",
            "head_frame_reliability", "ignore_fraction", "psnr", "face_parts", "unsupported_relabelled_fraction",
            "unobserved_fraction"} <= set(q)
    assert 0.0 <= q["unsupported_relabelled_fraction"] < 0.2
    assert 0.0 <= q["unobserved_fraction"] < 0.5  # a dense synthetic rig saw most of what the probe renders show
    assert 0.0 <= q["consensus_margin"] <= 1.0 and 0.0 <= q["face_parts"] <= 1.0
    assert 0.0 <= q["quality"] <= 1.0 and q["input_iou"]["skin"] > 0.5
    hf = marker["head_frame"]
    assert hf["source"] in ("labels+symmetry", "labels", "profile+symmetry", "cameras+symmetry", "cameras")
    assert 0.0 <= hf["reliability"] <= 1.0 and isinstance(hf["checks"], dict)
    assert isinstance(hf["landmarks_found"], list)
    # the label-free profile's cross-check is recorded whatever the source (a plane and a rig exist)
    assert 0.0 <= hf["profile_vs_frame_deg"] <= 180.0
    assert (hf["fallback_checks"] is None) == hf["source"].startswith("labels")
    assert np.asarray(hf["world_from_head"]).shape == (4, 4)
    assert marker["fit_metrics"]["quality"] == q["quality"]


def test_the_support_rule_is_on_by_default_and_reaches_every_entry_point():
    """--no-relabel-unsupported (facegs.fit.support) turns the rule off in the factory and in
    `facegs refine`; it is part of the factory config (and so of its hash)."""
    import argparse

    from facegs.cli.refine import config_from_args, register
    from facegs.factory.config import FactoryConfig, config_hash

    assert FactoryConfig().refine(0).support.enabled
    off = FactoryConfig(relabel_unsupported=False)
    assert not off.refine(0).support.enabled and config_hash(off) != config_hash(FactoryConfig())
    p = argparse.ArgumentParser()
    register(p.add_subparsers())
    assert config_from_args(p.parse_args(["refine", "s", "--out", "o"])).support.enabled
    assert not config_from_args(p.parse_args(["refine", "s", "--out", "o", "--no-relabel-unsupported"])).support.enabled


def test_ignore_unobserved_is_off_by_default_and_reaches_every_entry_point():
    """--ignore-unobserved (facegs.render.observed) reaches the factory's and `facegs refine`'s
    clean-up; it is part of the factory config (and so of its hash)."""
    import argparse

    from facegs.cli.refine import config_from_args, register
    from facegs.factory.config import FactoryConfig, config_hash

    assert not FactoryConfig().refine(0).cleanup_cfg.ignore_unobserved
    on = FactoryConfig(ignore_unobserved=True)
    assert on.refine(0).cleanup_cfg.ignore_unobserved and config_hash(on) != config_hash(FactoryConfig())
    p = argparse.ArgumentParser()
    register(p.add_subparsers())
    assert not config_from_args(p.parse_args(["refine", "s", "--out", "o"])).cleanup_cfg.ignore_unobserved
    assert config_from_args(p.parse_args(["refine", "s", "--out", "o", "--ignore-unobserved"])).cleanup_cfg.ignore_unobserved


def test_quality_score_combines_its_terms():
    from facegs.factory.quality import combine

    good = {"input_miou": 0.8, "consensus_confidence": 0.9, "consensus_margin": 0.9, "psnr": 32.0,
            "head_frame_reliability": 1.0, "ignore_fraction": 0.02, "face_parts": 1.0}
    assert combine(good) == pytest.approx(1.0 * 0.9 * 0.98, abs=1e-4)
    # a part the labels missed in every view (the consensus agrees with them) lowers the score
    assert combine({**good, "face_parts": 4 / 6}) == pytest.approx(4 / 6 * combine(good), abs=1e-4)
    assert combine({**good, "face_parts": None}) == 0.0
    assert combine({**good, "head_frame_reliability": 0.0}) == 0.0  # an unreliable frame sinks the subject
    assert combine({**good, "head_frame_reliability": 0.5}) == pytest.approx(0.5 * combine(good), abs=1e-4)
    assert combine({**good, "ignore_fraction": 0.5}) < combine(good)
    assert combine({**good, "consensus_margin": 0.6}) < combine(good)
    # reported beside the score, not part of it (they track the input's noise and the RGB fit; the
    # mean top probability falls with uniform label noise that the consensus removes)
    assert combine({**good, "input_miou": 0.2, "psnr": 15.0, "consensus_confidence": 0.5}) == combine(good)
    assert combine({**good, "consensus_margin": None}) == 0.0 and combine({}) == 0.0


def test_min_quality_gate_fails_the_subject_and_writes_nothing(subjects, tmp_path):
    import dataclasses

    from facegs.core.errors import FitError

    cfg = dataclasses.replace(CFG, min_quality=1.01)
    out = tmp_path / "gated"
    with pytest.raises(FitError, match=r"quality 0\.\d+ is below --min-quality 1\.01 \(input_miou"):
        process_subject(str(subjects / "g0"), str(out), cfg, chash=config_hash(cfg))
    assert not list(out.rglob("*.tar")) and not (out / "subjects" / "g0.json").exists()


def test_renders_carry_their_alpha(small_ds):
    """Each render has alpha.png: the subject's coverage; the RGB is premultiplied over black, and
    what cleanup made background is (nearly) uncovered."""
    from facegs.shards.stream import ShardDataset

    samples = list(ShardDataset(str(small_ds)))
    assert samples and all(s["alpha"] is not None for s in samples)
    for s in samples:
        a = s["alpha"]
        assert a.min() == 0.0 and a.max() > 0.9, s["__key__"]
        empty = a < 1 / 255
        dark = s["rgb"][empty].astype(float)
        assert dark.mean() < 1.0 and dark.max() <= 24  # premultiplied over black (JPEG ringing at edges)
        assert (s["seg"][a < 0.5] == 0).mean() > 0.95
        # each render says which share of its labelled pixels no capture view saw (facegs.render.observed)
        assert 0.0 <= s["meta"]["unobserved_fraction"] <= 1.0, s["__key__"]


def test_finalize_drops_a_half_committed_subject(small_ds, tmp_path):
    """A subject whose done marker is missing (crash between its records and the marker) is not
    listed, and its shards and records are removed; complete subjects stay."""
    out = tmp_path / "ds"
    shutil.copytree(small_ds, out)
    (out / "subjects" / "g1.json").unlink()
    assert set(complete_subjects(str(out))) == {"g0"}
    fin = finalize(str(out))
    assert fin["incomplete_subject_shards_removed"] == 2 and fin["complete_subjects"] == 1
    assert {p.name for p in (out / "shards").iterdir()} == {"g0-000000.tar", "g0-000001.tar"}
    assert read_manifest(str(out)).column("subjects").to_pylist() == [["g0"], ["g0"]]
    # a marker whose shard was rewritten with other bytes is not complete either
    (out / "shards" / "g0-000001.tar").write_bytes(b"x" * 10)
    assert complete_subjects(str(out)) == {}


def test_dataset_cli_info_sheet(small_ds, tmp_path, capsys):
    assert facegs_main(["dataset", "info", str(small_ds), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["samples"] == 8 and info["shards"] == 4 and info["subjects"] == 2
    assert sum(info["yaw_hist"]) == 8 and not info["orphan_shards"] and not info["failed_subjects"]
    assert facegs_main(["dataset", "info", str(small_ds)]) == 0
    assert "8 samples in 4 shards" in capsys.readouterr().out
    out = tmp_path / "sheet.png"
    assert facegs_main(["dataset", "sheet", str(small_ds), "--out", str(out), "--tile", "64"]) == 0
    import cv2

    img = cv2.imread(str(out))
    assert img is not None and img.shape[1] == 2 * 2 * 64  # 8 samples -> 2 columns of (RGB, overlay) pairs


def test_factory_subject_from_s3_to_s3(subjects, small_ds, s3_fs: S3Env):
    """A subject staged from object storage and shards written to it give the same bytes as on disk."""
    s3_fs.fs.put(str(subjects / "g0") + "/", s3_fs.url("subjects/g0") + "/", recursive=True)
    root = s3_fs.url("ds")
    urls = list_subject_urls(s3_fs.url("subjects"), s3_fs.storage_options)
    assert urls == [s3_fs.url("subjects/g0")]
    r = process_subject(urls[0], root, CFG, chash=config_hash(CFG), storage_options=s3_fs.storage_options)
    assert r.n_samples == 4
    fin = finalize(root, s3_fs.storage_options)
    assert fin["manifest_samples"] == 4 and fin["complete_subjects"] == 1
    for name in ("g0-000000.tar", "g0-000001.tar"):
        assert s3_fs.fs.cat_file(f"{s3_fs.bucket}/ds/shards/{name}") == (small_ds / "shards" / name).read_bytes()
    assert set(complete_subjects(root, s3_fs.storage_options)) == {"g0"}


@pytest.mark.slow
def test_factory_actor_that_cannot_start_fails_subjects_instead_of_hanging(subjects, tmp_path):
    """An unloadable checkpoint is refused by the preflight (one line, exit 2, nothing written); an
    actor that cannot be placed (a GPU actor on a CPU-only cluster) fails the subjects, not hangs."""
    bad_ckpt = tmp_path / "parser.pt"
    bad_ckpt.write_bytes(b"not a checkpoint")
    out = tmp_path / "ds"
    r = run_driver(["--subjects", good_list(subjects, tmp_path), "--out", str(out), "--num-cpus", "1",
                    "--labels", f"parser:{bad_ckpt}", "--preset", "test", "--no-progress"], timeout=300)
    assert r.returncode == 2 and "cannot be loaded" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not out.exists()
    r = run_driver(["--subjects", good_list(subjects, tmp_path), "--out", str(out), "--num-cpus", "1",
                    "--labels", "noise:pixel:0.3", "--preset", "test", "--no-progress", "--gpu", "yes",
                    "--actor-start-timeout", "5"], timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["subjects_failed"] == len(GOOD) and s["subjects_done"] == 0
    f = s["failures"]["g0"]
    assert f["error_type"] == "NoActorAvailable" and "could not be placed" in f["message"]
    assert read_manifest(str(out)).num_rows == 0


def test_capture_samples_round_trip(subjects, tmp_path):
    """Capture views as samples (the raw-views baseline): labels and poses survive the shards."""
    import numpy as np

    from facegs.core.imageio import read_labels
    from facegs.core.manifest import load_manifest
    from facegs.factory.capture import capture_samples
    from facegs.shards.manifest import merge_manifest
    from facegs.shards.stream import ShardDataset
    from facegs.shards.writer import commit_subject

    m = load_manifest(subjects / "g0")
    commit_subject(capture_samples(m, "0123abcd", label_field="gt_labels", rgb_format="png"), str(tmp_path / "ds"),
                   "g0", rgb_format="png")
    merge_manifest(str(tmp_path / "ds"))
    got = {s["__key__"]: s for s in ShardDataset(str(tmp_path / "ds"))}
    assert len(got) == len(m.views)
    for i, v in enumerate(m.views):
        s = got[f"g0_{i:05d}"]
        assert s["meta"]["source"] == "capture" and abs(s["meta"]["yaw"] - v.pose["yaw"]) < 1e-5
        assert np.array_equal(s["seg"], read_labels(m.path(v.gt_labels))) and not s["ignore"].any()
    with pytest.raises(Exception, match="no labels"):
        list(capture_samples(m, "0123abcd", label_field="labels"))
