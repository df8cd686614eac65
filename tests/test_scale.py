"""Per-subject bookkeeping that does not grow with the number of subjects (issue 14).

Filesystem operations are counted on real filesystems: a subclass of fsspec's MemoryFileSystem
registered under its own protocol (every call our code makes goes through it: the generic,
non-local path), the OS calls that list directories on local disk, and the requests a moto S3
server on loopback receives (``tests/s3_server.py``). Also: subject list files, ``--part``, the
bounded run summary and results table, a crash mid-run and its rerun, a shrunk rerun's orphans,
the subject index's quality and ``facegs dataset info``'s quality distribution.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections import Counter
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.memory import MemoryFileSystem
from s3_server import s3_fs, s3_server  # noqa: F401  (pytest fixtures)
from test_shards import make_samples

from facegs.cli.app import main as facegs_main
from facegs.core.errors import InputError
from facegs.core.ids import in_part, part_of
from facegs.core.tables import parquet_stream
from facegs.factory.config import FactoryConfig, config_hash
from facegs.factory.finalize import finalize
from facegs.factory.markers import SUBJECT_INDEX, complete_subjects, write_marker
from facegs.factory.runstats import RESULTS_SCHEMA, RunStats
from facegs.factory.sources import iter_subjects, list_subject_urls
from facegs.shards.manifest import read_manifest
from facegs.shards.root import DatasetRoot
from facegs.shards.scan import find_orphans
from facegs.shards.writer import commit_subject
from ray_jobs.build_dataset import BuildConfig, BuildError, check_unique, plan

CHASH = config_hash(FactoryConfig())


class CountingMemoryFS(MemoryFileSystem):
    """fsspec's in-memory filesystem, counting each public call by name (class-wide)."""

    protocol = ("countmem",)
    calls: Counter[str] = Counter()
    COUNTED = ("ls", "info", "exists", "isfile", "isdir", "cat_file", "pipe_file", "rm_file", "rm", "_open",
               "find", "glob", "walk", "mkdir", "makedirs", "mv", "copy", "put_file", "get_file", "touch")

    @classmethod
    def _strip_protocol(cls, path):
        if isinstance(path, str) and path.startswith("countmem://"):
            path = "memory://" + path[len("countmem://"):]
        return super()._strip_protocol(path)

    def __getattribute__(self, name: str):
        if name in CountingMemoryFS.COUNTED:
            CountingMemoryFS.calls[name] += 1
        return super().__getattribute__(name)


fsspec.register_implementation("countmem", CountingMemoryFS, clobber=True)


def fake_subject(root: DatasetRoot | str, sid: str, n_samples: int = 1, seed: int = 0, **kw) -> None:
    """A subject's writes after its fit (process_subject): shards + records, then its done marker."""
    root = DatasetRoot.open(root, kw.pop("storage_options", None))
    recs = commit_subject(make_samples(sid, n_samples, seed=seed), root, sid, maxcount=1, rgb_format="png")
    write_marker(root, {"subject_id": sid, "url": f"src/{sid}", "config_hash": CHASH,
                        "quality": {"quality": 0.5 + (part_of(sid, 100) - 50) / 200}, "facegs_version": "0.1.0"}, recs)


def sources(base: Path, ids: list[str]) -> Path:
    for sid in ids:
        (base / sid).mkdir(parents=True, exist_ok=True)
        (base / sid / "subject.json").write_text(json.dumps({"subject_id": sid}))
    return base


def ops(fn, *a, **kw) -> dict[str, int]:
    CountingMemoryFS.calls.clear()
    fn(*a, **kw)
    return dict(CountingMemoryFS.calls)


def test_commit_and_startup_operations_do_not_grow_with_n(tmp_path):
    got = {}
    for n in (50, 500):
        url = f"countmem://scale-{uuid.uuid4().hex[:8]}"
        for i in range(n):
            fake_subject(url, f"s{i:04d}")
        commit = ops(fake_subject, url, "newcomer", n_samples=2)
        assert not commit.get("ls") and not commit.get("find") and not commit.get("glob"), commit  # never a listing
        src = sources(tmp_path / f"src{n}", [f"s{i:04d}" for i in range(n)])
        cfg = BuildConfig(subjects=str(src), out=url, factory=FactoryConfig())
        startup = ops(plan, cfg)
        p = plan(cfg)
        assert len(p.done) == n and not p.todo
        # the start-up: one listing per root directory (shards/, subjects/, failures/), one read per marker
        got[n] = {"commit": commit, "startup_listings": startup.get("ls", 0),
                  "startup_reads_per_subject": startup.get("cat_file", 0) / n,
                  "startup_other": {k: v for k, v in startup.items() if k not in ("ls", "cat_file")}}
        fsspec.filesystem("countmem").rm(url.split("://", 1)[1], recursive=True)
    assert got[50] == got[500], got
    assert got[50]["startup_listings"] == 3 and got[50]["startup_reads_per_subject"] == 1.0, got


def test_local_commit_lists_no_directory(tmp_path, monkeypatch):
    root = tmp_path / "ds"
    for i in range(30):
        fake_subject(str(root), f"s{i:03d}")
    listed = []
    real_scandir, real_listdir = os.scandir, os.listdir
    monkeypatch.setattr(os, "scandir", lambda p=".": listed.append(p) or real_scandir(p))
    monkeypatch.setattr(os, "listdir", lambda p=".": listed.append(p) or real_listdir(p))
    fake_subject(str(root), "s015", n_samples=3)  # a rerun with more shards
    fake_subject(str(root), "s015", n_samples=1)  # and a shrunk one
    assert listed == []
    assert sorted(p.name for p in (root / "shards").glob("s015-*")) == ["s015-000000.tar"]
    assert sorted(p.name for p in (root / "records").glob("s015-*")) == ["s015-000000.json"]


def test_s3_requests_of_one_commit_do_not_grow_with_n(s3_fs, tmp_path):  # noqa: F811  (s3_fs: the AWS environment)
    from s3_server import CountingMotoServer  # the counting server of this test only

    server = CountingMotoServer()
    try:
        import boto3
        import s3fs

        boto3.client("s3", endpoint_url=server.endpoint_url, region_name="us-east-1", aws_access_key_id="testing",
                     aws_secret_access_key="testing").create_bucket(Bucket="counted")
        s3fs.S3FileSystem.clear_instance_cache()
        so = {"key": "testing", "secret": "testing", "endpoint_url": server.endpoint_url}
        fs = s3fs.S3FileSystem(**so)
        got = {}
        for n in (20, 200):
            local = tmp_path / f"n{n}"
            for i in range(n):
                fake_subject(str(local), f"s{i:04d}")
            fs.put(str(local) + "/", f"counted/n{n}/", recursive=True)
            url = f"s3://counted/n{n}"
            server.reset()
            fake_subject(url, "newcomer", storage_options=so)
            got[n] = {k: v for k, v in server.counts().items() if v}
            server.reset()
            assert len(complete_subjects(url, so)) == n + 1
            c = server.counts()
            # start-up check: one read per marker, one LIST page per 1000 keys of shards/ and subjects/
            assert c["GET"] == n + 1 and c["LIST"] == 2 and sum(c.values()) == n + 3, c
        assert got[20] == got[200], got
        # a fresh subject: probe for old records, shard, record, probe for a stale next shard, marker
        assert got[20] == {"GET": 2, "PUT": 3}, got
    finally:
        server.stop()


def test_subject_list_files(tmp_path):
    src = sources(tmp_path / "src", ["a1", "b2", "c3"])
    txt = tmp_path / "list.txt"
    txt.write_text(f"# three\n{src / 'a1'}\n\n{src / 'b2'}/  # trailing slash\n{src / 'a1'}\n{src / 'c3'}\n")
    csv = tmp_path / "list.csv"
    csv.write_text("note,url\nx," + f"{src / 'a1'}\ny,{src / 'c3'}\n")
    parquet = tmp_path / "list.parquet"
    pq.write_table(pa.table({"url": [str(src / "b2"), str(src / "c3")]}), parquet)
    assert [sid for _, sid in iter_subjects(str(txt))] == ["a1", "b2", "c3"]  # de-duplicated, in order
    assert [sid for _, sid in iter_subjects(str(csv))] == ["a1", "c3"]
    assert [sid for _, sid in iter_subjects(str(parquet))] == ["b2", "c3"]
    assert [Path(u).name for u in list_subject_urls(str(src))] == ["a1", "b2", "c3"]
    bad = tmp_path / "bad.csv"
    bad.write_text(f"note,url\nx,{src / 'a1'}\ny\n")
    with pytest.raises(InputError, match=r"line 3: 1 fields where the header has 2.*bad\.csv"):
        list_subject_urls(str(bad))
    nocol = tmp_path / "nocol.csv"
    nocol.write_text("name\na1\n")
    with pytest.raises(InputError, match=r"no column named url.*nocol\.csv"):
        list_subject_urls(str(nocol))
    empty = tmp_path / "empty.csv"
    empty.write_text(f"note,url\nx,{src / 'a1'}\ny,\n")
    with pytest.raises(InputError, match=r"line 3 \(column 'url'\): empty subject URL.*empty\.csv"):
        list_subject_urls(str(empty))
    ctl = tmp_path / "ctl.txt"
    ctl.write_text(f"{src / 'a1'}\n{src}/b\x012\n")
    with pytest.raises(InputError, match=r"line 2: subject URL .* control character.*ctl\.txt"):
        list_subject_urls(str(ctl))
    badpq = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"url": [str(src / "a1"), None]}), badpq)
    with pytest.raises(InputError, match=r"row 2 \(column 'url'\): empty subject URL.*bad\.parquet"):
        list_subject_urls(str(badpq))
    notpq = tmp_path / "not.parquet"
    notpq.write_text("hello")
    with pytest.raises(InputError, match=r"not a readable Parquet file.*not\.parquet"):
        list_subject_urls(str(notpq))


def test_parts_are_disjoint_cover_everything_and_are_stable(tmp_path):
    ids = [f"subj{i:05d}" for i in range(3000)]
    parts = {k: {s for s in ids if in_part(s, (k, 4))} for k in range(1, 5)}
    assert set().union(*parts.values()) == set(ids) and sum(map(len, parts.values())) == len(ids)
    assert all(500 < len(v) < 1000 for v in parts.values())  # roughly balanced
    # not Python's salted hash(): the same in every process
    assert part_of("subj00000", 4) == 1 + int(hashlib.sha256(b"subj00000").hexdigest()[:16], 16) % 4
    src = sources(tmp_path / "src", ids[:40])
    todo = [sorted(t.subject_id for t in plan(BuildConfig(subjects=str(src), out=str(tmp_path / "ds"),
                                                            part=f"{k}/3")).todo) for k in (1, 2, 3)]
    assert sorted(s for t in todo for s in t) == ids[:40] and all(todo)
    with pytest.raises(BuildError, match="K/N"):
        plan(BuildConfig(subjects=str(src), out=str(tmp_path / "ds"), part="4/3"))
    with pytest.raises(BuildError, match=r"more than one directory: \['dup'\]"):
        list(check_unique([("a", "dup"), ("b", "x"), ("c", "dup")]))


def test_summary_is_bounded_and_results_table_streams(tmp_path):
    sizes = {}
    for n in (300, 3000):
        st = RunStats()
        fs = fsspec.filesystem("file")
        with parquet_stream(fs, str(tmp_path / f"results{n}.parquet"), RESULTS_SCHEMA, rows_per_group=100) as rows:
            for i in range(n):
                out = {"n_samples": 3, "shards": [{}], "seconds": {"stage": 0.1, "fit": 1.0 + i % 7}, "quality": 0.5,
                       "device": "cpu", "pid": 1, "warnings": []}
                rows.add(st.add_done(f"s{i}", f"u/s{i}", 1 + (i % 10 == 0), out))
                if i % 3 == 0:
                    rows.add(st.add_failure({"subject_id": f"f{i}", "url": f"u/f{i}", "attempts": 1,
                                             "error_type": "InputError", "message": "bad image"}))
        d = st.as_dict()
        sizes[n] = len(json.dumps(d))
        assert d["subjects_done"] == n and len(d["failures"]) == min(100, (n + 2) // 3)
        assert d["failures_not_listed"] == (n + 2) // 3 - len(d["failures"])
        assert d["timings_s"]["fit"]["p50"] == 4.0 and d["timings_s"]["fit"]["max"] == 7.0
        t = pq.read_table(tmp_path / f"results{n}.parquet")
        assert t.num_rows == n + (n + 2) // 3 and t.schema.equals(RESULTS_SCHEMA)
        assert pq.ParquetFile(tmp_path / f"results{n}.parquet").num_row_groups > 1
    assert abs(sizes[3000] - sizes[300]) < 0.05 * sizes[300], sizes


def test_crash_mid_run_then_rerun_is_byte_identical(tmp_path):
    ids = [f"s{i}" for i in range(6)]
    src = sources(tmp_path / "src", ids)
    ref = tmp_path / "ref"
    for sid in ids:
        fake_subject(str(ref), sid, n_samples=3)
    finalize(str(ref))
    out = tmp_path / "ds"
    for sid in ids[:3]:
        fake_subject(str(out), sid, n_samples=3)

    def crashing(sid):  # dies after the first of its three shards
        for i, s in enumerate(make_samples(sid, 3)):
            if i == 1:
                raise KeyboardInterrupt
            yield s

    with pytest.raises(KeyboardInterrupt):
        commit_subject(crashing("s3"), str(out), "s3", maxcount=1, rgb_format="png")
    (out / "shards" / ".s4-000000.tar.tmp-0123456789ab").write_bytes(b"partial")  # a killed local write
    p = plan(BuildConfig(subjects=str(src), out=str(out)))
    assert p.done == set(ids[:3]) and [t.subject_id for t in p.todo] == ids[3:]
    for t in p.todo:
        fake_subject(str(out), t.subject_id, n_samples=3)
    fin = finalize(str(out))
    assert fin["complete_subjects"] == 6 and fin["temp_files_removed"] == 1
    shards = {p.name: p.read_bytes() for p in (out / "shards").iterdir()}
    assert shards == {p.name: p.read_bytes() for p in (ref / "shards").iterdir()}
    keys = [k for row in read_manifest(str(out)).to_pylist() for k in row["keys"]]
    assert sorted(keys) == sorted(f"{s}_{v:05d}" for s in ids for v in range(3))  # nothing lost or twice
    assert read_manifest(str(out)).equals(read_manifest(str(ref))) and not find_orphans(str(out))


def test_shrunk_rerun_orphans_are_cleaned(tmp_path):
    root = tmp_path / "ds"
    fake_subject(str(root), "a", n_samples=4)
    fake_subject(str(root), "b", n_samples=2)

    def crashing(sid, n, at):
        for i, s in enumerate(make_samples(sid, n)):
            if i == at:
                raise KeyboardInterrupt
            yield s

    # a shrunk rerun of "a" (2 views now) killed after its first shard: 000001..000003 of the old run remain
    (root / "subjects" / "a.json").unlink()
    with pytest.raises(KeyboardInterrupt):
        commit_subject(crashing("a", 2, 1), str(root), "a", maxcount=1, rgb_format="png")
    fin = finalize(str(root))
    assert fin["complete_subjects"] == 1 and fin["orphan_shards_removed"] == 4, fin
    assert sorted(p.name for p in (root / "shards").iterdir()) == ["b-000000.tar", "b-000001.tar"]
    assert sorted(p.name for p in (root / "records").iterdir()) == ["b-000000.json", "b-000001.json"]
    fake_subject(str(root), "a", n_samples=4)
    fake_subject(str(root), "a", n_samples=2)  # shrunk, uninterrupted: the commit itself removes 2 and 3
    assert sorted(p.name for p in (root / "shards").glob("a-*")) == ["a-000000.tar", "a-000001.tar"]
    finalize(str(root))
    assert not find_orphans(str(root)) and len(read_manifest(str(root))) == 4


def test_subject_index_quality_and_dataset_info(tmp_path, capsys):
    root = tmp_path / "ds"
    ids = [f"q{i:02d}" for i in range(20)]
    for sid in ids:
        fake_subject(str(root), sid)
    finalize(str(root))
    idx = pq.read_table(root / SUBJECT_INDEX).to_pylist()
    assert [r["subject_id"] for r in idx] == sorted(ids) and all(0 <= r["quality"] <= 1 for r in idx)
    (root / "summary.json").write_text(json.dumps({"config": {"min_quality": 0.5}}))
    assert facegs_main(["dataset", "info", str(root), "--json"]) == 0
    q = json.loads(capsys.readouterr().out)["quality"]
    qs = sorted(r["quality"] for r in idx)
    assert q["count"] == 20 and q["min"] == qs[0] and q["max"] == qs[-1] and q["min"] <= q["p10"] <= q["median"]
    assert q["median"] <= q["p90"] <= q["max"] and q["below_min_quality"] == sum(x < 0.5 for x in qs)
    assert q["min_quality"] == 0.5
    assert facegs_main(["dataset", "info", str(root)]) == 0
    text = capsys.readouterr().out
    assert f"quality of 20 subjects: min {qs[0]:.3f}" in text and "below --min-quality 0.5" in text


def test_older_root_markers_without_manifest_rows_are_still_read(tmp_path):
    root = tmp_path / "ds"
    for sid in ("o1", "o2"):
        fake_subject(str(root), sid, n_samples=2)
        p = root / "subjects" / f"{sid}.json"
        m = json.loads(p.read_text())
        del m["records"]  # as written before the markers carried their manifest rows
        m["shards"] = [{k: s[k] for k in ("shard", "sha256", "num_samples")} for s in m["shards"]]
        p.write_text(json.dumps(m))
    (root / "records" / "o2-000001.json").unlink()  # and one of them lost a record: incomplete
    assert set(complete_subjects(str(root))) == {"o1"}
    fin = finalize(str(root))
    assert fin["complete_subjects"] == 1 and fin["manifest_shards"] == 2
    assert [r["shard"] for r in read_manifest(str(root)).to_pylist()] == ["shards/o1-000000.tar", "shards/o1-000001.tar"]


def test_dataset_verify(tmp_path, capsys):
    root = tmp_path / "ds"
    for sid in ("v1", "v2"):
        fake_subject(str(root), sid, n_samples=2)
    finalize(str(root))
    assert facegs_main(["dataset", "verify", str(root)]) == 0
    assert "4 of 4 shards match" in capsys.readouterr().out
    p = root / "shards" / "v2-000001.tar"
    data = bytearray(p.read_bytes())
    data[700] ^= 0xFF
    p.write_bytes(bytes(data))
    assert facegs_main(["dataset", "verify", str(root)]) == 1
    out = capsys.readouterr().out
    assert "v2-000001.tar" in out and "3 of 4 shards match" in out
