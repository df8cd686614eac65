import numpy as np
import pytest

from facegs.core import cameras as C
from facegs.core.errors import InputError
from facegs.shards.schema import (
    SHARD_MANIFEST_SCHEMA,
    check_sample_meta,
    pose_histogram,
    sample_key,
    shard_record_table,
)


def meta(**kw):
    d = {"schema_version": 1, "key": sample_key("synth_0001", 7), "subject_id": "synth_0001", "view_index": 7,
         "source": "render", "width": 64, "height": 64, "yaw": 75.0, "pitch": -10.0, "roll": 2.0,
         "K": C.intrinsics_from_fov(64, 64, 30).tolist(), "world_to_camera": np.eye(4).tolist(),
         "label_set": "celebamask19", "label_set_version": 1, "config_hash": "deadbeef", "facegs_version": "0.1.0"}
    d.update(kw)
    return d


def test_sample_key_has_no_dots():
    assert sample_key("synth_0001", 7) == "synth_0001_00007"
    with pytest.raises(ValueError):
        sample_key("a.b", 1)


def test_sample_meta_schema():
    check_sample_meta(meta())
    with pytest.raises(InputError, match="yaw"):
        check_sample_meta(meta(yaw=400.0))
    with pytest.raises(InputError, match="source"):
        check_sample_meta(meta(source="other"))


def test_pose_histogram_and_manifest_table():
    hy, hp = pose_histogram(np.array([-90, -80, 0, 89, 100]), np.array([0, 0, 0, 44, -60]))
    assert sum(hy) == 5 and hy[0] == 2 and hy[-1] == 2 and len(hy) == 12 and len(hp) == 6
    rec = {"shard": "shards/ds-000000.tar", "shard_index": 0, "num_samples": 5, "num_bytes": 1024, "sha256": "0" * 64,
           "subjects": ["s1"], "keys": ["s1_00000"], "yaw_hist": hy, "pitch_hist": hp, "label_set": "celebamask19",
           "config_hash": "deadbeef", "facegs_version": "0.1.0"}
    t = shard_record_table([dict(rec, shard_index=1), rec])
    assert t.schema.equals(SHARD_MANIFEST_SCHEMA) and t["shard_index"].to_pylist() == [0, 1]
    with pytest.raises(ValueError):  # pyarrow.ArrowInvalid
        shard_record_table([dict(rec, yaw_hist=[1, 2])])  # wrong histogram length
