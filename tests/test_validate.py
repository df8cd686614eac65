"""Subject validation: each kind of bad input is found and named (subject, view, field)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fixtures_io import edit_manifest, run_cli, write_subject

from facegs.core.errors import InputError
from facegs.core.imageio import write_labels, write_rgb
from facegs.ingest.validate import ERROR, WARNING, Problem, load_subject, validate_subject, validate_tree


def _errors(probs):
    return [p for p in probs if p.severity == ERROR]


def _only(probs, view, field):
    """The single error problem; check it names subject S1, ``view`` and ``field``."""
    errs = _errors(probs)
    assert len(errs) == 1, [str(p) for p in probs]
    p = errs[0]
    assert (p.subject, p.view, p.field) == ("S1", view, field), str(p)
    text = str(p.to_error())
    assert "subject 'S1'" in text and f"field '{field}'" in text
    if view is not None:
        assert f"view '{view}'" in text
    return p


def test_valid_subject_has_no_problems(tmp_path):
    write_subject(tmp_path / "s")
    assert validate_subject(tmp_path / "s") == []
    assert validate_subject(tmp_path / "s", check_images=False) == []
    assert load_subject(tmp_path / "s").subject_id == "S1"


def test_missing_image(tmp_path):
    write_subject(tmp_path / "s")
    (tmp_path / "s/images/v02.png").unlink()
    p = _only(validate_subject(tmp_path / "s"), "v02", "image")
    assert "does not exist" in p.message and p.path.endswith("v02.png")


@pytest.mark.parametrize("field,rel", [("labels", "labels/v01.png"), ("confidence", "labels/v01_conf.png"), ("mask", "labels/v01_mask.png")])
def test_missing_label_files(tmp_path, field, rel):
    write_subject(tmp_path / "s")
    (tmp_path / "s" / rel).unlink()
    _only(validate_subject(tmp_path / "s", check_images=False), "v01", field)


def test_corrupt_image(tmp_path):
    write_subject(tmp_path / "s")
    (tmp_path / "s/images/v03.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png at all" * 3)
    for check in (True, False):
        p = _only(validate_subject(tmp_path / "s", check_images=check), "v03", "image")
        assert "corrupt" in p.message


def test_image_size_mismatch(tmp_path):
    write_subject(tmp_path / "s")
    write_rgb(tmp_path / "s/images/v00.png", np.zeros((50, 60, 3), np.uint8))
    p = _only(validate_subject(tmp_path / "s"), "v00", "image")
    assert "60x50" in p.message and "96x72" in p.message


def test_label_size_mismatch(tmp_path):
    write_subject(tmp_path / "s")
    write_labels(tmp_path / "s/labels/v04.png", np.zeros((10, 10), np.uint8))
    p = _only(validate_subject(tmp_path / "s"), "v04", "labels")
    assert "10x10" in p.message


def test_non_finite_rotation(tmp_path):
    write_subject(tmp_path / "s")
    edit_manifest(tmp_path / "s", lambda d: d["views"][1]["world_to_camera"][0].__setitem__(1, float("nan")))
    p = _only(validate_subject(tmp_path / "s"), "v01", "world_to_camera")
    assert "non-finite" in p.message


def test_non_orthonormal_rotation_and_reflection(tmp_path):
    write_subject(tmp_path / "s")

    def scale(d):
        R = d["views"][2]["world_to_camera"]
        for r in range(3):
            for c in range(3):
                R[r][c] *= 1.1

    edit_manifest(tmp_path / "s", scale)
    p = _only(validate_subject(tmp_path / "s"), "v02", "world_to_camera")
    assert "orthonormal" in p.message

    write_subject(tmp_path / "t")

    def mirror(d):
        d["views"][0]["world_to_camera"][0] = [-x for x in d["views"][0]["world_to_camera"][0]]

    edit_manifest(tmp_path / "t", mirror)
    p = [q for q in validate_subject(tmp_path / "t") if q.severity == ERROR][0]
    assert (p.view, p.field) == ("v00", "world_to_camera") and "reflection" in p.message


def test_bad_K_and_last_row(tmp_path):
    write_subject(tmp_path / "s")

    def bad(d):
        d["views"][3]["K"][2] = [0, 0, 2]
        d["views"][4]["world_to_camera"][3] = [0, 0, 1, 1]

    edit_manifest(tmp_path / "s", bad)
    errs = _errors(validate_subject(tmp_path / "s"))
    assert {(p.view, p.field) for p in errs} == {("v03", "K"), ("v04", "world_to_camera")}
    assert any("pinhole" in p.message for p in errs) and any("last row" in p.message for p in errs)


def test_duplicate_view_ids(tmp_path):
    write_subject(tmp_path / "s")
    edit_manifest(tmp_path / "s", lambda d: d["views"][4].__setitem__("view_id", "v01"))
    p = _only(validate_subject(tmp_path / "s"), "v01", "view_id")
    assert "duplicate" in p.message


def test_too_few_views(tmp_path):
    write_subject(tmp_path / "s", n=3)
    p = _only(validate_subject(tmp_path / "s", min_views=4), None, "views")
    assert "only 3 views" in p.message
    assert validate_subject(tmp_path / "s", min_views=3) == []


def test_label_out_of_range(tmp_path):
    write_subject(tmp_path / "s")
    lab = np.zeros((72, 96), np.uint8)
    lab[5, 5] = 42
    lab[6, 6] = 19
    lab[7, 7] = 255  # ignore: allowed
    write_labels(tmp_path / "s/labels/v02.png", lab)
    p = _only(validate_subject(tmp_path / "s"), "v02", "labels")
    assert "[19, 42]" in p.message and "celebamask19" in p.message
    assert validate_subject(tmp_path / "s", check_images=False) == []  # quick mode does not decode labels
    # lapa11 has 11 classes: every view's stripes (0..18) are out of range there
    errs = _errors(validate_subject(tmp_path / "s", label_set="lapa11"))
    assert len(errs) == 5 and all(p.field == "labels" for p in errs)


def test_manifest_missing_invalid_json_and_schema(tmp_path):
    (tmp_path / "a").mkdir()
    p = validate_subject(tmp_path / "a")[0]
    assert p.field == "subject.json" and "no subject.json" in p.message
    write_subject(tmp_path / "b")
    (tmp_path / "b/subject.json").write_text("{ not json")
    p = validate_subject(tmp_path / "b")[0]
    assert p.field == "subject.json" and "invalid JSON" in p.message
    write_subject(tmp_path / "c")
    edit_manifest(tmp_path / "c", lambda d: d["views"][2].__setitem__("width", "wide"))
    probs = validate_subject(tmp_path / "c")
    assert [(p.subject, p.view, p.field) for p in probs] == [("S1", "v02", "width")]
    assert "schema violation" in probs[0].message


def test_points3d_unreadable(tmp_path):
    write_subject(tmp_path / "s")
    (tmp_path / "s/points3d.npz").write_bytes(b"garbage")
    p = _only(validate_subject(tmp_path / "s"), None, "points3d")
    assert "unreadable" in p.message
    np.savez(tmp_path / "s/points3d.npz", xyz=np.array([object()], dtype=object))
    p = _only(validate_subject(tmp_path / "s"), None, "points3d")
    assert "unreadable" in p.message  # object arrays need pickle: refused


def test_distortion_is_a_warning(tmp_path):
    write_subject(tmp_path / "s")
    edit_manifest(tmp_path / "s", lambda d: d["views"][0].__setitem__("distortion", [0.1, 0, 0, 0]))
    probs = validate_subject(tmp_path / "s")
    assert [(p.severity, p.view, p.field) for p in probs] == [(WARNING, "v00", "distortion")]
    load_subject(tmp_path / "s")  # warnings do not block


def test_load_subject_raises_first_error(tmp_path):
    write_subject(tmp_path / "s")
    (tmp_path / "s/images/v01.png").unlink()
    (tmp_path / "s/images/v03.png").unlink()
    with pytest.raises(InputError) as ei:
        load_subject(tmp_path / "s")
    assert (ei.value.subject, ei.value.view, ei.value.field) == ("S1", "v01", "image")


def test_validate_tree_and_duplicate_subject_ids(tmp_path):
    write_subject(tmp_path / "root/a", "A")
    write_subject(tmp_path / "root/b", "B")
    write_subject(tmp_path / "root/c", "A")
    rep = validate_tree(tmp_path / "root")
    assert sorted(rep) == ["a", "b", "c"]
    assert rep["b"] == []
    assert [p.field for p in rep["a"]] == ["subject_id"] and "c" in rep["a"][0].message
    rep = validate_tree(tmp_path / "root/b")
    assert rep == {"b": []}
    (tmp_path / "empty").mkdir()
    rep = validate_tree(tmp_path / "empty")
    assert list(rep) == ["empty"] and "no subject.json" in rep["empty"][0].message


def test_problem_roundtrip():
    p = Problem("S", "v", "K", "bad", "/x", ERROR)
    assert p.as_dict() == {"subject": "S", "view": "v", "field": "K", "message": "bad", "path": "/x", "severity": "error"}
    assert str(p) == "error: subject 'S', view 'v', field 'K': bad (file: /x)"


def test_validate_cli_good_and_bad(tmp_path, monkeypatch, capsys):
    write_subject(tmp_path / "good/s1", "s1")
    write_subject(tmp_path / "good/s2", "s2")
    rc = run_cli(["validate", str(tmp_path / "good")], monkeypatch)
    out = capsys.readouterr().out
    assert rc == 0 and "2 subject(s) checked: 2 valid, 0 with errors; 0 error(s)" in out

    write_subject(tmp_path / "bad/s1", "s1")
    write_subject(tmp_path / "bad/s2", "s2")
    (tmp_path / "bad/s2/images/v01.png").write_bytes(b"junk")
    report = tmp_path / "rep" / "report.json"
    rc = run_cli(["validate", str(tmp_path / "bad"), "--json", str(report), "--min-views", "5"], monkeypatch)
    out = capsys.readouterr().out
    assert rc == 1
    header = out.splitlines()[0].split()
    assert header == ["subject", "view", "field", "severity", "message"]
    line = next(l for l in out.splitlines() if "corrupt" in l)
    assert line.split()[:4] == ["s2", "v01", "image", "error"]
    assert "2 subject(s) checked: 1 valid, 1 with errors; 1 error(s), 0 warning(s)" in out
    doc = json.loads(report.read_text())
    assert doc["summary"] == {"subjects": 2, "subjects_with_errors": 1, "errors": 1, "warnings": 0}
    assert doc["subjects"]["s2"][0]["view"] == "v01" and doc["subjects"]["s1"] == []

    rc = run_cli(["validate", str(tmp_path / "bad"), "--min-views", "6", "--quick"], monkeypatch)
    out = capsys.readouterr().out
    assert rc == 1 and "only 5 views, need at least 6" in out
