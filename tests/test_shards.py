"""facegs.shards: reproducible tars, atomic visibility, records, orphans and the manifest,
on local disk, memory:// and a real local S3 API server (moto)."""

from __future__ import annotations

import gc
import hashlib
import io
import json
import tarfile
import uuid
from collections.abc import Iterator

import fsspec
import numpy as np
import pyarrow.parquet as pq
import pytest
from s3_server import S3Env, s3_fs, s3_server  # noqa: F401  (pytest fixtures)

from facegs.core import cameras as C
from facegs.core.errors import InputError
from facegs.core.hashing import canonical_json
from facegs.shards.encode import Sample, encode_sample, member_order
from facegs.shards.manifest import merge_manifest, read_manifest
from facegs.shards.scan import cleanup_orphans, find_orphans, list_committed, subject_records
from facegs.shards.schema import SHARD_MANIFEST_SCHEMA, sample_key
from facegs.shards.writer import commit_subject, write_shards

H, W = 24, 32


def make_meta(subject: str, view: int, yaw: float, pitch: float) -> dict:
    return {"schema_version": 1, "key": sample_key(subject, view), "subject_id": subject, "view_index": view,
            "source": "render", "width": W, "height": H, "yaw": yaw, "pitch": pitch, "roll": 3.0,
            "K": C.intrinsics_from_fov(W, H, 40.0).tolist(), "world_to_camera": np.eye(4).tolist(),
            "world_from_head": np.eye(4).tolist(), "label_set": "celebamask19", "label_set_version": 1,
            "fit_metrics": {"psnr": 30.5, "note": "synthetic"}, "config_hash": "0123abcd",
            "facegs_version": "0.1.0"}


def make_samples(subject: str, n: int, seed: int = 0) -> list[Sample]:
    """Synthetic views: smooth RGB, skin with the subject's left eye/brow on the image's right."""
    rng = np.random.default_rng([seed, n, len(subject)])
    out = []
    yy, xx = np.mgrid[0:H, 0:W]
    for v in range(n):
        rgb = np.stack([(xx * 7 + v * 11) % 256, (yy * 9 + v * 5) % 256, (xx + yy + v) % 256], -1).astype(np.uint8)
        rgb = np.clip(rgb.astype(int) + rng.integers(0, 8, rgb.shape), 0, 255).astype(np.uint8)
        seg = np.zeros((H, W), np.uint8)
        seg[4:20, 4:28] = 1  # skin
        seg[8:11, 20:25] = 4  # l_eye on the image's right
        seg[8:11, 7:12] = 5  # r_eye on the image's left
        seg[5:7, 20:25] = 2  # l_brow
        seg[5:7, 7:12] = 3  # r_brow
        seg[12:15, 27:30] = 7  # l_ear
        seg[0:2, :] = 17  # hair
        seg[22:24, 0:3] = 255  # ignore
        conf = rng.random((H, W)).astype(np.float32)
        ignore = seg == 255
        yaw = float(np.linspace(-89.0, 89.0, max(n, 2))[v % max(n, 2)])
        out.append(Sample(rgb, seg, conf, ignore, make_meta(subject, v, yaw, float(rng.uniform(-40, 40)))))
    return out


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Boom(RuntimeError):
    pass


def crashing(samples: list[Sample], after: int) -> Iterator[Sample]:
    """Yield ``after`` samples, then raise (a renderer dying mid-subject)."""
    for i, s in enumerate(samples):
        if i == after:
            raise Boom("renderer died")
        yield s


@pytest.fixture(params=["file", "memory", "s3"])
def root(request, tmp_path) -> Iterator[tuple[str, dict]]:
    """(root URL, storage options) on each filesystem."""
    if request.param == "file":
        yield f"file://{tmp_path}/ds", {}
    elif request.param == "memory":
        url = f"memory://facegs-{uuid.uuid4().hex[:8]}/ds"
        yield url, {}
        fs = fsspec.filesystem("memory")
        if fs.exists(url):
            fs.rm(url, recursive=True)
    else:
        env: S3Env = request.getfixturevalue("s3_fs")
        yield env.url("ds"), env.storage_options


def _fs(url: str, opts: dict):
    return fsspec.core.url_to_fs(url, **opts)


# ----------------------------------------------------------------------------------------------


def test_encode_sample_members_and_canonical_json():
    s = make_samples("subjA", 1)[0]
    for fmt in ("jpg", "png"):
        m = encode_sample(s, fmt)
        assert tuple(m) == member_order(fmt) == (fmt, "seg.png", "conf.png", "ignore.png", "json")
        meta = json.loads(m["json"])
        assert meta["rgb_format"] == fmt and m["json"] == canonical_json(meta)
        assert m["json"] == json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
    assert "." not in s.key and s.key == "subjA_00000"
    # numpy scalars in metadata are converted, not rejected
    s2 = make_samples("subjA", 1)[0]
    s2.meta["yaw"] = np.float32(12.5)
    assert json.loads(encode_sample(s2, "png")["json"])["yaw"] == 12.5


def test_sample_validation_names_field():
    s = make_samples("subjA", 1)[0]
    with pytest.raises(InputError, match="field 'seg'"):
        encode_sample(Sample(s.rgb, s.seg.astype(np.int32), s.conf, s.ignore, s.meta))
    with pytest.raises(InputError, match="field 'rgb'"):
        encode_sample(Sample(s.rgb[:, :-1], s.seg, s.conf, s.ignore, s.meta))
    bad = s.seg.copy()
    bad[0, 0] = 40
    with pytest.raises(InputError, match="outside label set"):
        encode_sample(Sample(s.rgb, bad, s.conf, s.ignore, s.meta))
    with pytest.raises(InputError, match="conf"):
        encode_sample(Sample(s.rgb, s.seg, s.conf * 2.0, s.ignore, s.meta))
    with pytest.raises(InputError, match="key"):
        encode_sample(Sample(s.rgb, s.seg, s.conf, s.ignore, dict(s.meta, key="subjA_00009")))
    with pytest.raises(InputError, match="yaw"):
        encode_sample(Sample(s.rgb, s.seg, s.conf, s.ignore, dict(s.meta, yaw=500.0)))


@pytest.mark.parametrize("fmt", ["jpg", "png"])
def test_shards_are_byte_identical_across_runs(tmp_path, fmt):
    samples = make_samples("subjA", 7)
    recs = [write_shards(samples, str(tmp_path / run), "subjA", maxcount=3, rgb_format=fmt) for run in "ab"]
    assert [r.sha256 for r in recs[0]] == [r.sha256 for r in recs[1]] and len(recs[0]) == 3
    assert [r.num_samples for r in recs[0]] == [3, 3, 1]
    for rec in recs[0]:
        a = (tmp_path / "a" / rec.shard).read_bytes()
        assert a == (tmp_path / "b" / rec.shard).read_bytes()
        assert _sha(a) == rec.sha256 and len(a) == rec.num_bytes
        with tarfile.open(fileobj=io.BytesIO(a)) as tf:
            infos = tf.getmembers()
        assert [i.name for i in infos] == [f"{k}.{f}" for k in rec.keys for f in member_order(fmt)]
        for i in infos:
            assert (i.mtime, i.uid, i.gid, i.uname, i.gname, i.mode, i.isreg()) == (0, 0, 0, "", "", 0o444, True)
        assert all("." not in k for k in rec.keys)
    assert [k for r in recs[0] for k in r.keys] == [s.key for s in samples]  # order kept
    # the record JSON is the committed marker, written canonically
    rec_json = (tmp_path / "a" / "records" / "subjA-000000.json").read_bytes()
    assert rec_json == canonical_json(recs[0][0].as_dict())


def test_write_commit_and_manifest_on_each_filesystem(root):
    url, opts = root
    fs, path = _fs(url, opts)
    recs_a = commit_subject(make_samples("subjA", 5), url, "subjA", maxcount=2, rgb_format="png", storage_options=opts)
    recs_b = commit_subject(make_samples("subjB", 3), url, "subjB", maxcount=2, rgb_format="png", storage_options=opts)
    assert [r.shard for r in recs_a] == ["shards/subjA-000000.tar", "shards/subjA-000001.tar",
                                         "shards/subjA-000002.tar"]
    for rec in recs_a + recs_b:
        data = fs.cat_file(f"{path}/{rec.shard}")
        assert _sha(data) == rec.sha256 and len(data) == rec.num_bytes
        assert sum(rec.yaw_hist) == rec.num_samples == sum(rec.pitch_hist) == len(rec.keys)
        assert fs.exists(f"{path}/records/{rec.name[:-4]}.json")
    table = merge_manifest(url, opts)
    assert table.schema.equals(SHARD_MANIFEST_SCHEMA, check_metadata=True)
    assert table.num_rows == 5 and sum(table["num_samples"].to_pylist()) == 8
    back = read_manifest(url, opts)
    assert back.equals(table) and back.schema.equals(SHARD_MANIFEST_SCHEMA, check_metadata=True)
    with fs.open(f"{path}/manifest.parquet", "rb") as f:
        assert pq.read_schema(f).equals(SHARD_MANIFEST_SCHEMA, check_metadata=True)
    assert [r.shard for r in subject_records(url, "subjB", opts)] == [r.shard for r in recs_b]
    assert not find_orphans(url, opts)
    assert [r.sha256 for r in list_committed(url, opts, verify="sha256")] == \
        [r.sha256 for r in sorted(recs_a + recs_b, key=lambda r: r.shard)]


def test_shard_is_invisible_while_being_written(root):
    url, opts = root
    fs, path = _fs(url, opts)
    final = f"{path}/shards/subjA-000000.tar"
    seen = []

    def watching(samples, expect):
        for i, s in enumerate(samples):
            if i:  # the shard is open and holds i samples
                fs.invalidate_cache()
                seen.append(fs.cat_file(final) if fs.exists(final) else None)
                assert seen[-1] == expect
            yield s

    recs = write_shards(watching(make_samples("subjA", 4), None), url, "subjA", storage_options=opts)
    old = fs.cat_file(final)
    assert _sha(old) == recs[0].sha256
    write_shards(watching(make_samples("subjA", 4, seed=5), old), url, "subjA", storage_options=opts)
    assert fs.cat_file(final) != old and len(seen) == 6


def test_shard_bytes_do_not_depend_on_filesystem(tmp_path, s3_fs):
    samples = make_samples("subjA", 4)
    mem = f"memory://facegs-{uuid.uuid4().hex[:8]}"
    local = write_shards(samples, str(tmp_path), "subjA", maxcount=3)
    s3 = write_shards(samples, s3_fs.url("ds"), "subjA", maxcount=3, storage_options=s3_fs.storage_options)
    memory = write_shards(samples, mem, "subjA", maxcount=3)
    assert [r.sha256 for r in local] == [r.sha256 for r in s3] == [r.sha256 for r in memory]
    fsspec.filesystem("memory").rm(mem, recursive=True)


@pytest.mark.parametrize("where", ["file", "s3"])
def test_crash_mid_shard_leaves_no_shard_and_no_record(tmp_path, where, request):
    if where == "s3":
        env: S3Env = request.getfixturevalue("s3_fs")
        url, opts = env.url("ds"), env.storage_options
    else:
        url, opts = str(tmp_path / "ds"), {}
    fs, path = _fs(url, opts)
    samples = make_samples("subjA", 6)
    with pytest.raises(Boom):
        write_shards(crashing(samples, 4), url, "subjA", maxcount=10, storage_options=opts)
    fs.invalidate_cache()
    assert not fs.exists(f"{path}/shards/subjA-000000.tar")
    assert fs.find(path) == []  # no shard, no record, no temporary file
    if where == "s3":  # the multipart upload was aborted, not left dangling (also not by a file's __del__)
        gc.collect()
        assert not env.client.list_multipart_uploads(Bucket=env.bucket).get("Uploads")
    assert not find_orphans(url, opts) and list_committed(url, opts) == []

    # a crash in the second shard of a subject: the finished first shard is visible but uncommitted
    with pytest.raises(Boom):
        commit_subject(crashing(samples, 4), url, "subjA", maxcount=3, storage_options=opts)
    assert list_committed(url, opts) == [] and merge_manifest(url, opts).num_rows == 0
    assert find_orphans(url, opts).shards == ["shards/subjA-000000.tar"]

    # a failed rewrite of an existing key leaves the previous bytes in place
    recs = commit_subject(samples, url, "subjA", maxcount=3, storage_options=opts)
    before = fs.cat_file(f"{path}/shards/subjA-000000.tar")
    with pytest.raises(Boom):
        write_shards(crashing(make_samples("subjA", 6, seed=9), 2), url, "subjA", maxcount=3, storage_options=opts)
    assert fs.cat_file(f"{path}/shards/subjA-000000.tar") == before
    assert list_committed(url, opts, verify="sha256") == recs
    if where == "s3":
        gc.collect()
        assert not env.client.list_multipart_uploads(Bucket=env.bucket).get("Uploads")


def test_orphans_invalid_records_and_cleanup(tmp_path):
    root = tmp_path / "ds"
    commit_subject(make_samples("subjA", 2), str(root), "subjA")
    commit_subject(make_samples("subjB", 2), str(root), "subjB")
    commit_subject(make_samples("subjC", 2), str(root), "subjC")
    (root / "records" / "subjB-000000.json").unlink()  # crash between shard and record
    with open(root / "shards" / "subjC-000000.tar", "ab") as f:  # shard changed after its record
        f.write(b"\0" * 512)
    (root / "shards" / ".subjD-000000.tar.tmp-0123456789ab").write_bytes(b"partial")  # killed local write
    (root / "records" / "subjE-000000.json").write_text("{not json")

    assert [r.shard for r in list_committed(str(root))] == ["shards/subjA-000000.tar"]
    rep = find_orphans(str(root))
    assert rep.shards == ["shards/subjB-000000.tar", "shards/subjC-000000.tar"]
    assert rep.temp_files == ["shards/.subjD-000000.tar.tmp-0123456789ab"]
    assert [p for p, _ in rep.invalid_records] == ["records/subjC-000000.json", "records/subjE-000000.json"]
    assert "bytes" in dict(rep.invalid_records)["records/subjC-000000.json"]
    assert merge_manifest(str(root))["shard"].to_pylist() == ["shards/subjA-000000.tar"]
    assert not find_orphans(str(root), min_age_s=3600)  # too fresh: a writer may still be running

    cleaned = cleanup_orphans(str(root))
    assert cleaned.shards == rep.shards
    assert not find_orphans(str(root))
    assert sorted(p.name for p in (root / "shards").iterdir()) == ["subjA-000000.tar"]
    assert sorted(p.name for p in (root / "records").iterdir()) == ["subjA-000000.json"]


def test_sha256_verification_catches_same_size_corruption(tmp_path):
    root = tmp_path / "ds"
    (rec,) = commit_subject(make_samples("subjA", 2), str(root), "subjA")
    p = root / rec.shard
    data = bytearray(p.read_bytes())
    data[600] ^= 0xFF
    p.write_bytes(bytes(data))
    assert list_committed(str(root), verify="size") == [rec]
    assert list_committed(str(root), verify="sha256") == []


def test_rerun_subject_overwrites_identical_bytes(root):
    url, opts = root
    fs, path = _fs(url, opts)
    first = commit_subject(make_samples("subjA", 5), url, "subjA", maxcount=2, storage_options=opts)
    commit_subject(make_samples("subjB", 2), url, "subjB", maxcount=2, storage_options=opts)
    again = commit_subject(make_samples("subjA", 5), url, "subjA", maxcount=2, storage_options=opts)
    assert again == first
    table = merge_manifest(url, opts)
    subjects = [s for row in table["subjects"].to_pylist() for s in row]
    assert sorted(set(subjects)) == ["subjA", "subjB"]
    keys = [k for row in table["keys"].to_pylist() for k in row]
    assert len(keys) == len(set(keys)) == 7  # each sample listed exactly once
    # a smaller rerun (fewer views) removes the stale shard of the larger run
    smaller = commit_subject(make_samples("subjA", 3), url, "subjA", maxcount=2, storage_options=opts)
    assert len(smaller) == 2 and not fs.exists(f"{path}/shards/subjA-000002.tar")
    assert not fs.exists(f"{path}/records/subjA-000002.json")
    assert not find_orphans(url, opts)
    assert sorted(r.shard for r in subject_records(url, "subjA", opts)) == [r.shard for r in smaller]


def test_commit_subject_rejects_foreign_samples_and_keeps_pose_histograms(tmp_path):
    with pytest.raises(InputError, match="subjB"):
        commit_subject(make_samples("subjB", 1), str(tmp_path), "subjA")
    samples = make_samples("subjA", 9)
    recs = write_shards(samples, str(tmp_path), "subjA", maxcount=4)
    yh = np.sum([r.yaw_hist for r in recs], axis=0)
    assert yh.sum() == 9 and yh[0] == 1 and yh[-1] == 1  # yaws from -89 to 89
    assert np.sum([r.pitch_hist for r in recs]) == 9
    with pytest.raises(ValueError, match="prefix"):
        write_shards(samples, str(tmp_path), "bad.prefix")
