"""The edge rules one by one: the identifier rule, confined paths, the pixel cap, conversion warnings,
file modes, subject ids that never crash the driver, staged paths mapped back to the user's URL,
the preflight's probe, and the reader's opt-out."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from fixtures_io import edit_manifest, run_cli, write_subject
from s3_server import S3Env, s3_fs, s3_server  # noqa: F401  (pytest fixtures)
from test_shards import make_samples

from facegs.core.errors import InputError
from facegs.core.ids import ID_PATTERN, check_id, id_problem, is_valid_id, relative_path_problem, safe_id
from facegs.core.imageio import DEFAULT_MAX_PIXELS, read_rgb
from facegs.core.manifest import load_manifest
from facegs.core.schemas import load_json_schema
from facegs.core.storage import atomic_write_bytes
from facegs.factory.markers import record_failure
from facegs.factory.preflight import PreflightError, check_output_root
from facegs.factory.sources import subject_id_of
from facegs.ingest.validate import ERROR, WARNING, validate_subject, validate_tree
from facegs.shards.manifest import merge_manifest
from facegs.shards.schema import sample_key
from facegs.shards.stream import ShardDataset
from facegs.shards.writer import commit_subject

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------
# one identifier rule


def test_schemas_carry_the_identifier_rule():
    subj = load_json_schema("subject_manifest.schema.json")
    shard = load_json_schema("shard_sample.schema.json")
    assert subj["properties"]["subject_id"]["pattern"] == ID_PATTERN
    assert subj["properties"]["views"]["items"]["properties"]["view_id"]["pattern"] == ID_PATTERN
    assert shard["properties"]["subject_id"]["pattern"] == ID_PATTERN
    assert shard["properties"]["key"]["pattern"] == ID_PATTERN[:-1] + "_[0-9]{5,}$"


@pytest.mark.parametrize("value,ok,why", [
    ("S1", True, None), ("g_0-1", True, None), ("_x", True, None), ("x" * 128, True, None),
    ("", False, "empty"), ("x" * 129, False, "129 characters"), ("a.b", False, "'.'"), ("evil/slash", False, "'/'"),
    ("../../x", False, "'./'"), ("-rm", False, "must start"), ("a b", False, "' '"), ("é", False, "'é'"),
    (7, False, "string"), (None, False, "string"),
])
def test_identifier_rule(value, ok, why):
    assert is_valid_id(value) == ok
    assert (re.match(ID_PATTERN, value) is not None) == ok if isinstance(value, str) else True
    if not ok:
        assert why in id_problem(value)
        with pytest.raises(InputError, match="identifier rule"):
            check_id(value, what="view id", field="view_id")
        if isinstance(value, str):
            s = safe_id(value)
            assert is_valid_id(s) and s == safe_id(value) and s != value
    else:
        assert check_id(value) == value and safe_id(value) == value
    with pytest.raises(InputError):
        sample_key("a.b", 0)
    assert safe_id("../../x") != safe_id("..//x")  # distinct texts stay distinct


@pytest.mark.parametrize("rel,bad", [
    ("images/a.png", False), ("a/b/c.png", False), ("./images/a.png", False),
    ("/etc/passwd", True), ("../other/a.png", True), ("images/../../a.png", True), ("images/../a.png", True),
    ("C:/x.png", True), ("images\\a.png", True), ("s3://bucket/a.png", True), ("", True), ("~/a.png", True),
])
def test_relative_path_rule(rel, bad):
    assert (relative_path_problem(rel) is not None) == bad


# ----------------------------------------------------------------------------------------------
# paths a manifest names stay inside the subject


def test_validate_reports_escaping_paths_and_the_opt_in(tmp_path, monkeypatch, capsys):
    other = write_subject(tmp_path / "subjects" / "other", "other")
    write_subject(tmp_path / "subjects" / "s1", "s1")
    s1 = tmp_path / "subjects" / "s1"
    outside = other.path(other.views[0].image)
    edit_manifest(s1, lambda d: (d["views"][0].update(image=str(outside)),
                                 d["views"][1].update(labels="../other/labels/v01.png")))
    (s1 / "images" / "v02.png").unlink()
    (s1 / "images" / "v02.png").symlink_to(other.path(other.views[2].image))
    probs = {(p.view, p.field): p for p in validate_subject(s1) if p.severity == ERROR}
    assert set(probs) == {("v00", "image"), ("v01", "labels"), ("v02", "image")}
    assert "absolute" in probs[("v00", "image")].message and "'..'" in probs[("v01", "labels")].message
    assert "outside the subject directory" in probs[("v02", "image")].message
    assert validate_subject(s1, allow_external_paths=True) == []  # the user's opt-in
    with pytest.raises(InputError, match="absolute"):
        load_manifest(s1)
    m = load_manifest(s1, allow_external_paths=True)
    assert read_rgb(m.path(m.views[0].image)).shape == (72, 96, 3)
    assert run_cli(["validate", str(tmp_path / "subjects")], monkeypatch) == 1
    out = capsys.readouterr().out
    assert "--allow-external-paths" in out and "1 with errors" in out
    assert run_cli(["validate", str(tmp_path / "subjects"), "--allow-external-paths"], monkeypatch) == 0


def test_manifest_that_is_not_an_object_is_reported_under_the_directory_name(tmp_path):
    d = tmp_path / "dir_name"
    write_subject(d, "whatever")
    (d / "subject.json").write_text("[]")
    (p,) = validate_tree(d)["dir_name"]
    assert p.subject == "dir_name" and "JSON object" in p.message
    edit = {"schema_version": 1, "subject_id": "../../x", "label_set": "celebamask19", "views": []}
    (d / "subject.json").write_text(json.dumps(edit))
    probs = validate_tree(d)["dir_name"]
    assert all(p.subject == "dir_name" for p in probs)
    assert any("subject id '../../x'" in p.message for p in probs)


# ----------------------------------------------------------------------------------------------
# the pixel cap, before decoding


BOMB_RSS = """
import resource, sys
from facegs.core.errors import InputError
from facegs.core.imageio import read_rgb
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    read_rgb(sys.argv[1])
    print("decoded")
except InputError as e:
    print(str(e))
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


def test_pixel_bomb_is_refused_from_its_header_without_decoding(tmp_path):
    from PIL import Image

    im = Image.new("L", (16000, 16000))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    del im
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(buf.getvalue())
    assert bomb.stat().st_size < 300_000  # a quarter megabyte that decodes to 256 megapixels
    r = subprocess.run([sys.executable, "-c", BOMB_RSS, str(bomb)], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    msg, grew_mb = r.stdout.strip().splitlines()
    assert "256.0 megapixels" in msg and "nothing decoded" in msg and "bomb.png" in msg
    assert int(grew_mb) < 64  # decoding would take 768 MB (16000 x 16000 x 3)


def test_pixel_cap_is_configurable(tmp_path, monkeypatch):
    p = tmp_path / "a.png"
    cv2.imwrite(str(p), np.zeros((64, 80, 3), np.uint8))
    assert read_rgb(p).shape == (64, 80, 3) and DEFAULT_MAX_PIXELS == 120_000_000
    with pytest.raises(InputError, match=r"80x64 = 0.0 megapixels, over the cap of 0.004"):
        read_rgb(p, max_pixels=4000)
    monkeypatch.setenv("FACEGS_MAX_PIXELS", "5000")
    with pytest.raises(InputError, match="FACEGS_MAX_PIXELS"):
        read_rgb(p)


def test_non_rgb_captures_are_converted_with_one_warning_per_subject(tmp_path):
    m = write_subject(tmp_path / "s", "s")
    paths = [m.path(v.image) for v in m.views]
    rgb = cv2.imread(str(paths[0]))
    cv2.imwrite(str(paths[0]), cv2.cvtColor(rgb, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(paths[1]), cv2.cvtColor(rgb, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(paths[2]), rgb.astype(np.uint16) * 257)
    cv2.imwrite(str(paths[3]), np.dstack([rgb, np.full(rgb.shape[:2], 200, np.uint8)]))
    probs = validate_subject(tmp_path / "s")
    assert [p for p in probs if p.severity == ERROR] == []
    (w,) = [p for p in probs if p.severity == WARNING]  # once per subject
    assert w.subject == "s" and w.field == "image" and w.message.startswith("4 image(s) are not 8-bit RGB")
    for part in ("grayscale: images/v00.png, images/v01.png", "16-bit: images/v02.png",
                 "RGBA (alpha dropped): images/v03.png"):
        assert part in w.message, w.message


# ----------------------------------------------------------------------------------------------
# file modes, subject ids, failure records, staged paths


def test_files_get_0644_unless_the_umask_says_otherwise(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a.json", b"{}")
        commit_subject(make_samples("s1", 2), str(tmp_path / "ds"), "s1", rgb_format="png")
        merge_manifest(str(tmp_path / "ds"))
        record_failure(str(tmp_path / "ds"), {"subject_id": "s2", "message": "x"})
        files = [tmp_path / "a.json", *(tmp_path / "ds").rglob("*.*")]
        assert {f.name: oct(f.stat().st_mode & 0o777) for f in files if f.is_file()} == \
            {f.name: "0o644" for f in files if f.is_file()}
        assert any(f.name == "manifest.parquet" for f in files) and any(f.suffix == ".tar" for f in files)
        os.umask(0o077)
        atomic_write_bytes(tmp_path / "b.json", b"{}")
        assert oct((tmp_path / "b.json").stat().st_mode & 0o777) == "0o600"
    finally:
        os.umask(old)


@pytest.mark.parametrize("content,expect", [
    (b"[]", "dir_x"), (b"{", "dir_x"), (bytes(range(256)), "dir_x"), (b'{"subject_id": "../../x"}', "dir_x"),
    (b'{"subject_id": "evil/slash"}', "dir_x"), (b'{"subject_id": 7}', "dir_x"), (b'{"subject_id": "ok_1"}', "ok_1"),
    (None, "dir_x"),
])
def test_subject_id_of_never_raises(tmp_path, content, expect):
    d = tmp_path / "dir_x"
    d.mkdir()
    if content is not None:
        (d / "subject.json").write_bytes(content)
    assert subject_id_of(str(d)) == expect
    bad = tmp_path / "my.subject"
    bad.mkdir()
    (bad / "subject.json").write_text("[]")
    assert is_valid_id(subject_id_of(str(bad))) and subject_id_of(str(bad)).startswith("my_subject-")


def test_failure_record_of_a_bad_id_lands_inside_the_root(tmp_path):
    root = tmp_path / "out"
    record_failure(str(root), {"subject_id": "../../escaped", "message": "x"})
    record_failure(str(root), {"subject_id": "evil/slash", "message": "x"})
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert len(files) == 2 and all(f.startswith("out/failures/") and f.count("/") == 2 for f in files)


def test_staged_subject_errors_name_the_users_url(tmp_path, s3_fs: S3Env):  # noqa: F811
    from facegs.factory.config import FactoryConfig, config_hash
    from facegs.factory.process import process_subject

    m = write_subject(tmp_path / "s3sub", "s3sub")
    m.path(m.views[1].image).write_bytes(b"\x89PNG\r\n\x1a\ngarbage")
    s3_fs.fs.put(str(tmp_path / "s3sub") + "/", s3_fs.url("subjects/s3sub") + "/", recursive=True)
    cfg = FactoryConfig(labels="existing", fit_preset="test")
    with pytest.raises(InputError) as ei:
        process_subject(s3_fs.url("subjects/s3sub"), s3_fs.url("ds"), cfg, chash=config_hash(cfg),
                        storage_options=s3_fs.storage_options)
    msg = str(ei.value)
    assert f"{s3_fs.url('subjects/s3sub')}/images/v01.png" in msg and "facegs-subject-" not in msg
    assert "subject 's3sub'" in msg and "view 'v01'" in msg
    # an invalid subject.json is reported under the directory's name, never "subject"
    s3_fs.fs.pipe_file(f"{s3_fs.bucket}/subjects/s3sub/subject.json", b"[]")
    with pytest.raises(InputError) as ei:
        process_subject(s3_fs.url("subjects/s3sub"), s3_fs.url("ds"), cfg, chash=config_hash(cfg),
                        storage_options=s3_fs.storage_options)
    assert "subject 's3sub'" in str(ei.value) and s3_fs.url("subjects/s3sub/subject.json") in str(ei.value)


def test_input_error_path_mapping():
    e = InputError("resolves to /tmp/x/s/images/a.png", subject="s", path="/tmp/x/s/images/a.png")
    m = e.with_path_prefix("/tmp/x/s", "s3://b/s")
    assert m.path == "s3://b/s/images/a.png" and "s3://b/s/images/a.png" in m.message
    assert e.with_path_prefix("/tmp/y", "s3://b").path == e.path


# ----------------------------------------------------------------------------------------------
# preflight and the reader's opt-out


def test_output_probe_leaves_nothing_behind(tmp_path):
    check_output_root(str(tmp_path / "a" / "b" / "ds"))
    assert list(tmp_path.iterdir()) == []  # the parents it created for the probe are gone again
    (tmp_path / "ds").mkdir()
    check_output_root(str(tmp_path / "ds"))
    assert list((tmp_path / "ds").iterdir()) == []
    (tmp_path / "f").write_text("x")
    with pytest.raises(PreflightError, match="regular file"):
        check_output_root(str(tmp_path / "f" / "ds"))


def test_reader_verification_opt_out(tmp_path):
    for s in ("a", "b"):
        commit_subject(make_samples(s, 3), str(tmp_path), s, rgb_format="png")
    merge_manifest(str(tmp_path))
    shard = tmp_path / "shards" / "a-000000.tar"
    data = bytearray(shard.read_bytes())
    i = data.index(b'"roll":') + 8
    data[i] = ord("7") if data[i] != ord("7") else ord("8")  # same size, still a valid sample
    shard.write_bytes(bytes(data))
    with pytest.raises(InputError, match="sha256"):
        list(ShardDataset(str(tmp_path)))
    assert len(list(ShardDataset(str(tmp_path), verify=False))) == 6  # the documented opt-out
