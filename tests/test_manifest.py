import json

import numpy as np
import pyarrow as pa
import pytest

from facegs.core import cameras as C
from facegs.core.errors import InputError
from facegs.core.manifest import VIEW_ARROW_SCHEMA, SubjectManifest, View, load_manifest, save_manifest
from facegs.core.storage import atomic_directory


def make_manifest(root, n=3):
    views = [
        View(view_id=f"cam_{i:03d}", image=f"images/cam_{i:03d}.png", width=64, height=48,
             K=C.intrinsics_from_fov(64, 48, 30), world_to_camera=C.head_pose_to_w2c(20 * i, 0, 0, 2.0),
             distortion=np.array([0.1, 0.0, 0.0, 0.0, 0.0]) if i == 0 else None,
             pose={"yaw": 20.0 * i, "pitch": 0.0, "roll": 0.0})
        for i in range(n)
    ]
    return SubjectManifest(subject_id="s01", label_set="celebamask19", views=tuple(views), root=root,
                           world_from_head=np.eye(4), source={"format": "test"})


def test_round_trip_and_arrow(tmp_path):
    m = make_manifest(tmp_path)
    save_manifest(m)
    back = load_manifest(tmp_path)
    assert back.subject_id == "s01" and len(back.views) == 3
    for a, b in zip(m.views, back.views):
        assert np.array_equal(a.K, b.K) and np.array_equal(a.world_to_camera, b.world_to_camera)
        assert a.pose == b.pose
    assert np.array_equal(back.views[0].distortion, m.views[0].distortion) and back.views[1].distortion is None
    t = back.to_arrow()
    assert t.schema.equals(VIEW_ARROW_SCHEMA, check_metadata=False) and t.num_rows == 3
    assert np.allclose(np.array(t["K"][1].as_py()).reshape(3, 3), m.views[1].K)
    assert back.path("images/x.png") == tmp_path / "images/x.png"
    pa.Table.from_pylist([], schema=VIEW_ARROW_SCHEMA)  # schema is constructible empty


def test_schema_errors_name_subject_view_field(tmp_path):
    d = make_manifest(tmp_path).to_json()
    d["views"][1]["K"] = [[1, 0, 0], [0, 1, 0]]
    (tmp_path / "subject.json").write_text(json.dumps(d))
    with pytest.raises(InputError) as e:
        load_manifest(tmp_path)
    assert e.value.subject == "s01" and e.value.view == "cam_001" and e.value.field == "K"
    assert "cam_001" in str(e.value) and "subject.json" in str(e.value)


def test_dotted_ids_are_rejected(tmp_path):
    d = make_manifest(tmp_path).to_json()
    d["subject_id"] = "a.b"
    (tmp_path / "subject.json").write_text(json.dumps(d))
    with pytest.raises(InputError, match="subject_id"):
        load_manifest(tmp_path)


def test_invalid_json_names_line(tmp_path):
    (tmp_path / "subject.json").write_text("{\n  'oops'\n}")
    with pytest.raises(InputError, match="line 2"):
        load_manifest(tmp_path)


def test_atomic_directory_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "subj"
    with pytest.raises(RuntimeError):
        with atomic_directory(out) as d:
            (d / "half.txt").write_text("x")
            raise RuntimeError("boom")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with atomic_directory(out) as d:
        (d / "ok.txt").write_text("x")
    assert (out / "ok.txt").exists()
    with pytest.raises(FileExistsError):
        with atomic_directory(out):
            pass
    with atomic_directory(out, overwrite=True) as d:
        (d / "new.txt").write_text("y")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
