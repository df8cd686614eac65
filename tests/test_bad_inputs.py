"""Every bad input a one-line error: table-driven, one table per kind of input.

- ``CLI_KINDS``: factory arguments and storage faults (local and a real S3 API on loopback); the
  driver (``ray_jobs.build_dataset.main``) runs in-process and must refuse before Ray starts: exit
  status, one line naming the problem, nothing written, the inputs untouched.
- ``SHARD_KINDS``: malicious or damaged shards read by ``facegs dataset sheet`` (and by
  ``ShardDataset`` for the API-only kinds): exit status 1, one line naming shard / key / field,
  nothing written, and the other shards of the dataset read exactly as before.
- ``SUBJECT_KINDS`` (slow): bad subjects beside two good ones in ONE factory run (preset ``test``,
  30 fit steps, 64 px subjects, 3 renders), compared with a reference run of the good subjects
  alone: each bad subject fails alone with its message in ``summary.json`` and the driver's output,
  its failure record lands inside the root under a safe name, the good subjects' shards are
  byte-identical to the reference's, and nothing appears outside the output root.

Kinds accepted on purpose are in the tables too (``ACCEPTED``), each with what makes it acceptable.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tarfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from s3_server import s3_server  # noqa: F401  (pytest fixture)
from test_shards import make_samples

from facegs.cli.app import main as facegs_main
from facegs.core.errors import InputError
from facegs.core.imageio import write_rgb
from facegs.shards.manifest import merge_manifest, read_manifest
from facegs.shards.stream import ShardDataset
from facegs.shards.writer import commit_subject
from facegs.synth.generate import generate_subject

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def snapshot(root: Path, skip: tuple[Path, ...] = ()) -> dict[str, str]:
    """relative path -> sha256 of every file (and link) below ``root``, except under ``skip``."""
    out = {}
    for p in sorted(root.rglob("*")):
        if any(p == s or s in p.parents for s in skip):
            continue
        if p.is_symlink():
            out[p.relative_to(root).as_posix()] = "link:" + os.readlink(p)
        elif p.is_file():
            out[p.relative_to(root).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def png_bomb(w: int = 16000, h: int = 16000) -> bytes:
    """A tiny PNG whose header declares ``w`` x ``h`` RGB pixels (no real pixel data)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


@contextlib.contextmanager
def unwritable(d: Path) -> Iterator[bool]:
    """Make directory ``d`` unwritable for this process (chmod; chattr +i when running as root).
    Yields False when neither works here."""
    if os.geteuid() != 0:
        d.chmod(0o555)
        try:
            yield True
        finally:
            d.chmod(0o755)
        return
    ok = subprocess.run(["chattr", "+i", str(d)], capture_output=True).returncode == 0 if shutil.which("chattr") else False
    try:
        yield ok
    finally:
        if ok:
            subprocess.run(["chattr", "-i", str(d)], capture_output=True)


def one_line_error(err: str) -> str:
    """The error output is one line (argparse: its usage, then one error line), never a traceback."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err, err
    errs = [ln for ln in lines if "error:" in ln]
    assert len(errs) == 1, err
    if not lines[0].startswith("usage:"):
        assert lines == errs, err
    return errs[0]


# ----------------------------------------------------------------------------------------------
# CLI arguments and storage faults: the driver refuses before any work
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_subjects(tmp_path_factory) -> Path:
    """Two small synthetic subjects (64 px, the NeRSemble-like rig), shared by the factory runs."""
    root = tmp_path_factory.mktemp("bad_inputs") / "good"
    for i, sid in enumerate(("g0", "g1")):
        generate_subject(root, sid, 10 + i, rig="nersemble", res=64, background="plain")
    return root


@pytest.fixture(scope="module")
def tiny_subjects(tmp_path_factory) -> Path:
    """Two small valid subjects (5 views, 96 x 72): enough for the runs that must refuse to start."""
    from fixtures_io import write_subject

    root = tmp_path_factory.mktemp("tiny") / "subjects"
    for sid in ("g0", "g1"):
        write_subject(root / sid, sid)
    return root


@dataclass
class Ctx:
    tmp: Path
    subjects: Path
    out: Path
    s3: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _pickle_payload(ctx: Ctx) -> Path:
    """A 'checkpoint' that would create a file when unpickled without weights_only."""
    marker = ctx.tmp / "PWNED"
    ctx.extra["marker"] = marker

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    p = ctx.tmp / "evil.pt"
    p.write_bytes(pickle.dumps({"state_dict": Payload()}))
    return p


def _dup_ids(ctx: Ctx) -> Path:
    d = ctx.tmp / "dups"
    for name in ("a", "b"):
        shutil.copytree(ctx.subjects / "g0", d / name)
    return d


def _s3(ctx: Ctx, **kw: str) -> str:
    return json.dumps({"endpoint_url": ctx.s3, **kw})


BASE = ["--labels", "noise:pixel:0.3", "--preset", "test", "--no-progress"]

# kind -> (argv from the context, exit status, key words of the one error line)
CLI_KINDS: dict[str, tuple[Callable[[Ctx], list[str]], int, tuple[str, ...]]] = {
    "out_is_a_file": (lambda c: ["--subjects", str(c.subjects), "--out", str(c.extra["file"]), *BASE], 2,
                      ("output root", "regular file")),
    "out_under_a_file": (lambda c: ["--subjects", str(c.subjects), "--out", str(c.extra["file"] / "ds"), *BASE], 2,
                         ("output root", "regular file, not a directory")),
    "out_unwritable": (lambda c: ["--subjects", str(c.subjects), "--out", str(c.extra["ro"] / "ds"), *BASE], 2,
                       ("output root", "not writable")),
    "subjects_missing": (lambda c: ["--subjects", str(c.tmp / "nope"), "--out", str(c.out), *BASE], 2,
                         ("subject source", "does not exist")),
    "subjects_empty_dir": (lambda c: ["--subjects", str(c.extra["empty"]), "--out", str(c.out), *BASE], 2,
                           ("no subject directories",)),
    "subject_list_only_comments": (lambda c: ["--subjects", str(c.extra["comments"]), "--out", str(c.out), *BASE], 2,
                                   ("names no subjects",)),
    "parser_checkpoint_missing": (lambda c: ["--subjects", str(c.subjects), "--out", str(c.out), "--labels",
                                             f"parser:{c.tmp / 'missing.pt'}", "--preset", "test"], 2,
                                  ("parser checkpoint", "does not exist")),
    "parser_checkpoint_garbage": (lambda c: ["--subjects", str(c.subjects), "--out", str(c.out), "--labels",
                                             f"parser:{c.extra['garbage']}", "--preset", "test"], 2,
                                  ("parser checkpoint", "cannot be loaded")),
    "parser_checkpoint_pickle_payload": (lambda c: ["--subjects", str(c.subjects), "--out", str(c.out), "--labels",
                                                    f"parser:{_pickle_payload(c)}", "--preset", "test"], 2,
                                         ("parser checkpoint", "cannot be loaded")),
    "labels_bad_noise_spec": (lambda c: ["--subjects", str(c.subjects), "--out", str(c.out), "--labels",
                                         "noise:pixel:2", "--preset", "test"], 2, ("noise",)),
    "preset_unknown": (lambda c: ["--subjects", str(c.subjects), "--out", str(c.out), "--labels", "noise:pixel:0.3",
                                  "--preset", "huge"], 2, ("invalid choice", "huge")),
    "storage_options_not_json": (lambda c: ["--subjects", str(c.subjects), "--out", str(c.out), *BASE,
                                            "--storage-options", "{endpoint"], 2, ("JSON",)),
    "maxcount_zero": (lambda c: ["--subjects", str(c.subjects), "--out", str(c.out), *BASE, "--maxcount", "0"], 2,
                      ("maxcount",)),
    "fit_override_unknown_field": (lambda c: ["--subjects", str(c.subjects), "--out", str(c.out), *BASE,
                                              "--fit-overrides", '{"no_such_field": 1}'], 2, ("no_such_field",)),
    "duplicate_subject_ids": (lambda c: ["--subjects", str(_dup_ids(c)), "--out", str(c.out), *BASE], 2,
                              ("more than one directory", "g0")),
    "s3_no_credentials": (lambda c: ["--subjects", str(c.subjects), "--out", "s3://facegs-bad-inputs/ds", *BASE,
                                     "--storage-options", _s3(c)], 2, ("s3://facegs-bad-inputs/ds", "no S3 credentials")),
    "s3_endpoint_unreachable": (lambda c: ["--subjects", str(c.subjects), "--out", "s3://facegs-bad-inputs/ds", *BASE,
                                           "--storage-options", json.dumps({"endpoint_url": "http://127.0.0.1:9",
                                                                            "key": "k", "secret": "s"})], 2,
                                ("cannot reach the storage endpoint", "127.0.0.1:9")),
    "s3_bucket_missing": (lambda c: ["--subjects", str(c.subjects), "--out", "s3://no-such-bucket-b13/ds", *BASE,
                                     "--storage-options", _s3(c, key="k", secret="s")], 2,
                          ("no-such-bucket-b13", "bucket does not exist")),
}


@pytest.mark.parametrize("kind", list(CLI_KINDS))
def test_cli_and_storage_kinds(kind, tiny_subjects, tmp_path, capsys, monkeypatch, s3_server):  # noqa: F811
    import ray

    from ray_jobs import build_dataset

    argv_of, want_rc, words = CLI_KINDS[kind]
    ctx = Ctx(tmp=tmp_path, subjects=tiny_subjects, out=tmp_path / "out", s3=s3_server)
    (tmp_path / "file.txt").write_text("not a directory\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "comments.txt").write_text("# nothing here\n\n   # still nothing\n")
    (tmp_path / "garbage.pt").write_bytes(b"definitely not a checkpoint" * 10)
    (tmp_path / "ro").mkdir()
    ctx.extra.update(file=tmp_path / "file.txt", empty=tmp_path / "empty", comments=tmp_path / "comments.txt",
                     garbage=tmp_path / "garbage.pt", ro=tmp_path / "ro")
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    for var, val in (("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none")), ("AWS_CONFIG_FILE", str(tmp_path / "none")),
                     ("AWS_EC2_METADATA_DISABLED", "true"), ("AWS_DEFAULT_REGION", "us-east-1"),
                     ("NO_PROXY", "127.0.0.1,localhost")):
        monkeypatch.setenv(var, val)
    argv = argv_of(ctx)
    before_in = snapshot(tiny_subjects)
    before = snapshot(tmp_path)
    with unwritable(tmp_path / "ro") as ok:
        if kind == "out_unwritable" and not ok:
            pytest.skip("cannot make a directory unwritable here (root without chattr)")
        try:
            rc = build_dataset.main(argv)
        except SystemExit as e:  # argparse
            rc = e.code
    err = capsys.readouterr().err
    line = one_line_error(err)
    assert rc == want_rc, err
    for w in words:
        assert w.lower() in line.lower(), (kind, w, line)
    assert not ray.is_initialized()  # refused before Ray (or any subject) started
    assert snapshot(tiny_subjects) == before_in  # the inputs are untouched
    assert snapshot(tmp_path) == before  # nothing written, anywhere
    assert not ctx.out.exists() and not (tmp_path / "ro" / "ds").exists()
    if "marker" in ctx.extra:
        assert not ctx.extra["marker"].exists()  # the pickle was never executed (weights_only)


# ----------------------------------------------------------------------------------------------
# malicious and damaged shards
# ----------------------------------------------------------------------------------------------


COUNTS = {"subjA": 5, "subjB": 3, "subjC": 4}  # maxcount 3: subjA-0 (3), subjA-1 (2), subjB-0 (3), subjC-0 (3), subjC-1 (1)
TARGET = "shards/subjA-000000.tar"


@pytest.fixture(scope="module")
def shard_ds(tmp_path_factory) -> tuple[Path, dict[str, list[dict]]]:
    """A small committed dataset and its reference decode, shard by shard."""
    root = tmp_path_factory.mktemp("shards") / "ds"
    for subject, n in COUNTS.items():
        commit_subject(make_samples(subject, n), str(root), subject, maxcount=3, rgb_format="png")
    merge_manifest(str(root))
    ref = {rel: list(ShardDataset(str(root), shards=[rel])) for rel in read_manifest(str(root)).column("shard").to_pylist()}
    return root, ref


def members_of(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tf:
        return [(m.name, tf.extractfile(m).read()) for m in tf]


def write_members(path: Path, members: list[Any]) -> None:
    """Write a tar from (name, bytes) pairs or ready TarInfo objects (links), with tarfile itself."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tf.addfile(m)
            else:
                ti = tarfile.TarInfo(m[0])
                ti.size = len(m[1])
                tf.addfile(ti, io.BytesIO(m[1]))


def recommit(root: Path, rel: str) -> None:
    """Rewrite a shard's record to match its (rewritten) bytes and re-merge the manifest: an attacker
    who writes records too, so only the per-sample checks can catch what follows."""
    p = root / rel
    rec_path = root / "records" / (Path(rel).stem + ".json")
    rec = json.loads(rec_path.read_text())
    rec["num_bytes"] = p.stat().st_size
    rec["sha256"] = hashlib.sha256(p.read_bytes()).hexdigest()
    rec_path.write_text(json.dumps(rec))
    merge_manifest(str(root))


def edit_sample0(root: Path, fn: Callable[[list[tuple[str, bytes]]], list[Any]], record: bool = True) -> None:
    p = root / TARGET
    write_members(p, fn(members_of(p)))
    if record:
        recommit(root, TARGET)


def edit_json0(root: Path, fn: Callable[[dict], Any]) -> None:
    def edit(ms):
        out = []
        for name, data in ms:
            if name == "subjA_00000.json":
                d = json.loads(data)
                res = fn(d)
                data = res if isinstance(res, bytes) else json.dumps(d).encode()
            out.append((name, data))
        return out
    edit_sample0(root, edit)


def flip_json_digit(root: Path) -> None:
    """A same-size, one-byte corruption inside sample 0's JSON (still valid JSON, still a valid sample)."""
    p = root / TARGET
    data = bytearray(p.read_bytes())
    i = data.index(b'"yaw":') + 7
    while not chr(data[i]).isdigit():
        i += 1
    data[i] = ord("1") if data[i] != ord("1") else ord("2")
    p.write_bytes(bytes(data))


def truncate_at(root: Path, where: Callable[[list[tarfile.TarInfo]], int]) -> None:
    p = root / TARGET
    with tarfile.open(p) as tf:
        infos = tf.getmembers()
    data = p.read_bytes()
    p.write_bytes(data[: where(infos)])


def seg_with_200(ms):
    from facegs.core.imageio import decode_label_png, encode_label_png

    out = []
    for name, data in ms:
        if name == "subjA_00000.seg.png":
            seg = decode_label_png(data)
            seg[3, 3] = 200
            data = encode_label_png(seg)
        out.append((name, data))
    return out


def replace_member(suffix: str, data: bytes):
    return lambda ms: [(n, data if n == f"subjA_00000.{suffix}" else d) for n, d in ms]


def rename_key(ms):
    return [(n.replace("subjA_00000.", "subj.A_00000.") if n.startswith("subjA_00000.") else n, d) for n, d in ms]


def add_symlink(ms):
    ti = tarfile.TarInfo("subjA_00000.x.png")
    ti.type, ti.linkname = tarfile.SYMTYPE, "/etc/passwd"
    return [*ms[:2], ti, *ms[2:]]


def dup_key_shard(root: Path) -> None:
    """Another shard (with its own valid record) holding subjB's keys: the same key in two shards."""
    shutil.copy(root / "shards/subjB-000000.tar", root / "shards/dupe-000000.tar")
    rec = json.loads((root / "records/subjB-000000.json").read_text())
    rec["shard"] = "shards/dupe-000000.tar"
    (root / "records/dupe-000000.json").write_text(json.dumps(rec))
    merge_manifest(str(root))


def manifest_escape(root: Path) -> None:
    t = pq.read_table(root / "manifest.parquet")
    shards = t.column("shard").to_pylist()
    shards[0] = "../outside.tar"
    t = t.set_column(0, t.schema.field("shard"), pa.array(shards, pa.string()))
    pq.write_table(t, root / "manifest.parquet", use_compliant_nested_type=False)


def reorder(ms):
    return [*ms[:6], ("subjA_00000.txt", b"late"), *ms[6:]]  # a member of sample 0 after sample 1 began


def api(**kw: Any) -> Callable[[Path], None]:
    return lambda root: list(ShardDataset(str(root), **kw))


# kind -> (mutation of a copy of the dataset, key words, the shards it damages ("*": the manifest),
#          API call instead of `facegs dataset sheet`)
SHARD_KINDS: dict[str, tuple[Callable[[Path], None], tuple[str, ...], tuple[str, ...], Callable | None]] = {
    "one_byte_same_size_corruption": (flip_json_digit, ("sha256", TARGET), (TARGET,), None),
    "truncated_at_member_boundary": (lambda r: truncate_at(r, lambda i: i[5].offset),
                                     ("1 samples where its manifest row lists 3", "bytes"), (TARGET,), None),
    "truncated_inside_a_header": (lambda r: truncate_at(r, lambda i: i[5].offset + 100), ("truncated", TARGET),
                                  (TARGET,), None),
    "truncated_inside_member_data": (lambda r: truncate_at(r, lambda i: i[6].offset_data + 10), ("truncated",),
                                     (TARGET,), None),
    "bytes_appended_after_the_archive": (lambda r: (r / TARGET).write_bytes((r / TARGET).read_bytes() + b"\x01" * 7000),
                                         ("more than the", "bytes its manifest row lists"), (TARGET,), None),
    "shard_deleted_after_commit": (lambda r: (r / TARGET).unlink(), ("shard does not exist",), (TARGET,), None),
    "json_key_differs_from_member_key": (lambda r: edit_json0(r, lambda d: d.update(key="subjA_00009")),
                                         ("metadata key", "subjA_00009", "subjA_00000"), (TARGET,), None),
    "json_subject_differs_from_key": (lambda r: edit_json0(r, lambda d: d.update(subject_id="subjB")),
                                      ("subject_id", "subjB", "subjA_00000"), (TARGET,), None),
    "label_value_200": (lambda r: edit_sample0(r, seg_with_200), ("label values [200]", "seg.png"), (TARGET,), None),
    "yaw_nan": (lambda r: edit_json0(r, lambda d: json.dumps({**d, "yaw": float("nan")}).encode()),
                ("non-finite", "NaN"), (TARGET,), None),
    "yaw_not_a_number": (lambda r: edit_json0(r, lambda d: d.update(yaw="left")), ("yaw", "finite number"), (TARGET,),
                         None),
    "metadata_not_an_object": (lambda r: edit_json0(r, lambda d: b"[1, 2]"), ("JSON object",), (TARGET,), None),
    "metadata_not_json": (lambda r: edit_json0(r, lambda d: b"{not json"), ("not JSON",), (TARGET,), None),
    "unknown_label_set": (lambda r: edit_json0(r, lambda d: d.update(label_set="nope")), ("unknown label set",),
                          (TARGET,), None),
    "member_pixel_bomb": (lambda r: edit_sample0(r, replace_member("png", png_bomb())), ("megapixels", "png"),
                          (TARGET,), None),
    "member_size_differs_from_metadata": (
        lambda r: edit_sample0(r, replace_member("png", __import__("facegs.core.imageio", fromlist=["x"]).encode_rgb(
            np.zeros((10, 10, 3), np.uint8)))), ("10x10", "metadata says 32x24"), (TARGET,), None),
    "key_with_dots": (lambda r: edit_sample0(r, rename_key), ("'subj.A_00000'", "dot"), (TARGET,), None),
    "member_missing": (lambda r: edit_sample0(r, lambda ms: [m for m in ms if m[0] != "subjA_00000.seg.png"]),
                       ("needs exactly", "seg.png"), (TARGET,), None),
    "members_not_adjacent": (lambda r: edit_sample0(r, reorder), ("not adjacent",), (TARGET,), None),
    "member_name_dotdot": (lambda r: edit_sample0(r, lambda ms: [("../evil.json", b"{}"), *ms]), ("'..'",), (TARGET,),
                           None),
    "symlink_member": (lambda r: edit_sample0(r, add_symlink), ("symbolic link", "/etc/passwd"), (TARGET,), None),
    "same_key_in_two_shards": (dup_key_shard, ("appears in more than one shard", "subjB_00000"), ("*",), None),
    "manifest_names_a_path_outside": (manifest_escape, ("../outside.tar", "inside its dataset root"), ("*",), None),
    "api_shards_dotdot": (lambda r: None, ("'../x.tar'", "inside its dataset root"), (), api(shards=["../x.tar"])),
    "api_shards_absolute": (lambda r: None, ("'/etc/passwd'", "absolute"), (), api(shards=["/etc/passwd"])),
    "api_shard_not_in_manifest": (lambda r: shutil.copy(r / TARGET, r / "shards/extra-000000.tar"),
                                  ("not rows of manifest.parquet", "verify=False"), (),
                                  api(shards=["shards/extra-000000.tar"])),
    "api_member_over_byte_limit": (lambda r: None, ("exceeds the limit",), (), api(max_member_bytes=100)),
}

# accepted on purpose: kind -> (mutation, why it is fine, check after reading)
ACCEPTED: dict[str, tuple[Callable[[Path], None], str]] = {
    "pickle_member_ignored": (lambda r: edit_sample0(r, lambda ms: [*ms[:2], ("subjA_00000.pyd", pickle.dumps(
        type("P", (), {"__reduce__": lambda self: (open, (str(r.parent / "PWNED"), "w"))})())), *ms[2:]]),
        "unknown members are ignored and never unpickled (no webdataset basichandlers)"),
    "unknown_extra_member_ignored": (lambda r: edit_sample0(r, lambda ms: [*ms[:2], ("subjA_00000.txt", b"hello"),
                                                                             *ms[2:]]),
                                     "unknown members are ignored"),
}


def _same(a: list[dict], b: list[dict]) -> bool:
    return [s["__key__"] for s in a] == [s["__key__"] for s in b] and all(
        np.array_equal(x[f], y[f]) for x, y in zip(a, b) for f in ("rgb", "seg", "conf", "ignore")) and all(
        x["meta"] == y["meta"] for x, y in zip(a, b))


@pytest.mark.parametrize("kind", list(SHARD_KINDS))
def test_shard_kinds(kind, shard_ds, tmp_path, capsys):
    ref_root, ref = shard_ds
    mutate, words, damaged, call = SHARD_KINDS[kind]
    root = tmp_path / "ds"
    shutil.copytree(ref_root, root)
    mutate(root)
    before = snapshot(tmp_path)
    if call is None:
        rc = facegs_main(["dataset", "sheet", str(root), "--out", str(tmp_path / "sheet.png"), "--tile", "32"])
        line = one_line_error(capsys.readouterr().err)
        assert rc == 1
    else:
        with pytest.raises(InputError) as ei:
            call(root)
        line = str(ei.value)
        assert "\n" not in line
    for w in words:
        assert w in line, (kind, w, line)
    assert snapshot(tmp_path) == before and not (tmp_path / "sheet.png").exists()  # a reader writes nothing
    # the other shards read exactly as before (manifest-level damage: their bytes are untouched)
    good = [s for s in ref if s not in damaged]
    if "*" in damaged:
        for s in good:
            assert (root / s).read_bytes() == (ref_root / s).read_bytes()
    else:
        got = list(ShardDataset(str(root), shards=good, verify=(root / "manifest.parquet").exists()))
        assert _same(got, [x for s in good for x in ref[s]])
        skipped = list(ShardDataset(str(root), on_error="skip")) if call is None else []
        if call is None:  # skip mode: a damaged shard yields at most its samples before the damage
            assert {s["__key__"] for s in skipped} >= {x["__key__"] for s in good for x in ref[s]}


@pytest.mark.parametrize("kind", list(ACCEPTED))
def test_shard_kinds_accepted_on_purpose(kind, shard_ds, tmp_path):
    ref_root, ref = shard_ds
    mutate, _why = ACCEPTED[kind]
    root = tmp_path / "ds"
    shutil.copytree(ref_root, root)
    mutate(root)
    assert _same(list(ShardDataset(str(root))), [x for s in ref for x in ref[s]])
    assert not (tmp_path / "PWNED").exists()


# ----------------------------------------------------------------------------------------------
# bad subjects in one factory run, beside good ones
# ----------------------------------------------------------------------------------------------


def edit(d: Path, fn: Callable[[dict], Any]) -> None:
    p = d / "subject.json"
    doc = json.loads(p.read_text())
    fn(doc)
    p.write_text(json.dumps(doc))


def view_file(d: Path, i: int = 2, fld: str = "image") -> Path:
    return d / json.loads((d / "subject.json").read_text())["views"][i][fld]


def set_view(i: int, **kw: Any) -> Callable[[dict], None]:
    return lambda doc: doc["views"][i].update(kw)


def _gray_16bit_rgba(d: Path) -> None:
    import cv2

    for i, conv in enumerate((lambda a: cv2.cvtColor(a, cv2.COLOR_RGB2GRAY),
                              lambda a: a.astype(np.uint16) * 257,
                              lambda a: np.dstack([a, np.full(a.shape[:2], 255, np.uint8)]))):
        p = view_file(d, i)
        rgb = cv2.imread(str(p), cv2.IMREAD_COLOR)
        cv2.imwrite(str(p), conv(rgb))


def _points_pickle(d: Path) -> None:
    (d / "points3d.npz").write_bytes(pickle.dumps({"xyz": np.zeros((3, 3))}))
    edit(d, lambda doc: doc.update(points3d="points3d.npz"))


def _bad_gt(d: Path) -> None:
    from facegs.core.imageio import read_labels, write_labels

    p = view_file(d, 1, "gt_labels")
    lab = read_labels(p)
    lab[5, 5] = 200
    write_labels(p, lab)


# kind -> (mutation of a copy of a valid subject, key words of its failure message)
SUBJECT_KINDS: dict[str, tuple[Callable[[Path], None], tuple[str, ...]]] = {
    "corrupt_image": (lambda d: view_file(d).write_bytes(b"\x89PNG\r\n\x1a\nnot a png" * 4), ("corrupt", "image")),
    "truncated_image": (lambda d: view_file(d).write_bytes(view_file(d).read_bytes()[:300]), ("image", "corrupt")),
    "empty_image": (lambda d: view_file(d).write_bytes(b""), ("image", "corrupt")),
    "missing_image": (lambda d: view_file(d).unlink(), ("image", "does not exist")),
    "image_is_a_directory": (lambda d: (view_file(d).unlink(), view_file(d).mkdir()), ("not a regular file",)),
    "pixel_bomb_image": (lambda d: view_file(d).write_bytes(png_bomb()), ("megapixels", "nothing decoded")),
    "image_size_mismatch": (lambda d: edit(d, set_view(2, width=65)), ("64x64 pixels but the view says 65x64",)),
    "missing_K": (lambda d: edit(d, lambda doc: doc["views"][1].pop("K")), ("'K' is a required property",)),
    "nan_pose": (lambda d: edit(d, lambda doc: doc["views"][3]["world_to_camera"][0].__setitem__(2, float("nan"))),
                 ("non-finite", "world_to_camera")),
    "nan_K": (lambda d: edit(d, lambda doc: doc["views"][3]["K"][0].__setitem__(0, float("nan"))), ("non-finite", "K")),
    "reflected_rotation": (lambda d: edit(d, lambda doc: doc["views"][0]["world_to_camera"].__setitem__(
        0, [-x for x in doc["views"][0]["world_to_camera"][0]])), ("world_to_camera", "reflection")),
    "negative_focal": (lambda d: edit(d, lambda doc: doc["views"][0]["K"][0].__setitem__(0, -50.0)),
                       ("focal lengths must be positive",)),
    "too_few_views": (lambda d: edit(d, lambda doc: doc.__setitem__("views", doc["views"][:3])), ("only 3 views",)),
    "duplicate_view_ids": (lambda d: edit(d, lambda doc: doc["views"][1].update(view_id=doc["views"][0]["view_id"])),
                           ("duplicate view id",)),
    "manifest_is_a_list": (lambda d: (d / "subject.json").write_text("[]"), ("must hold a JSON object",)),
    "manifest_invalid_json": (lambda d: (d / "subject.json").write_text('{"schema_version": 1,'), ("invalid JSON",)),
    "manifest_binary_garbage": (lambda d: (d / "subject.json").write_bytes(bytes(range(256)) * 3),
                                ("subject.json",)),
    "subject_id_traversal": (lambda d: edit(d, lambda doc: doc.update(subject_id="../../escaped_b13")),
                             ("subject id '../../escaped_b13'", "identifier rule")),
    "subject_id_slash": (lambda d: edit(d, lambda doc: doc.update(subject_id="evil/slash")),
                         ("subject id 'evil/slash'", "'/'")),
    "subject_id_dot": (lambda d: edit(d, lambda doc: doc.update(subject_id="a.b")), ("subject id 'a.b'", "'.'")),
    "subject_id_too_long": (lambda d: edit(d, lambda doc: doc.update(subject_id="x" * 200)),
                            ("200 characters long",)),
    "subject_id_leading_dash": (lambda d: edit(d, lambda doc: doc.update(subject_id="-rm")),
                                ("must start with a letter",)),
    "view_id_with_slash": (lambda d: edit(d, set_view(0, view_id="../v0")), ("view id '../v0'",)),
    "absolute_image_path": (lambda d: edit(d, set_view(2, image=str(view_file(d, 2).resolve()))),
                            ("absolute", "--allow-external-paths")),
    "image_path_climbs_out": (lambda d: edit(d, set_view(2, image="../g0/images/cam_002.png")),
                              ("'..'", "--allow-external-paths")),
    "symlink_out_of_the_subject": (lambda d: (view_file(d).unlink(), view_file(d).symlink_to(
        d.parent / "g0" / "images" / view_file(d).name)), ("outside the subject directory", "symbolic link")),
    "unknown_manifest_field": (lambda d: edit(d, lambda doc: doc.update(evil=1)), ("Additional properties",)),
    "schema_version_2": (lambda d: edit(d, lambda doc: doc.update(schema_version=2)), ("schema_version",)),
    "unknown_label_set": (lambda d: edit(d, lambda doc: doc.update(label_set="nope")), ("label_set", "nope")),
    "gt_label_value_200": (_bad_gt, ("class values [200]", "gt_labels")),
    "no_gt_labels_for_noise_labels": (lambda d: edit(d, lambda doc: [v.pop("gt_labels") for v in doc["views"]]),
                                      ("noise labelling needs ground-truth labels",)),
    "points3d_is_a_pickle": (_points_pickle, ("points3d", "unreadable")),
    "mask_wrong_size": (lambda d: write_rgb(view_file(d, 1, "mask"), np.zeros((8, 8, 3), np.uint8)),
                        ("mask",)),
    "width_zero": (lambda d: edit(d, set_view(0, width=0)), ("width", "minimum")),
}

# accepted on purpose (in the same run): kind -> (mutation, why; the subject completes)
SUBJECT_ACCEPTED: dict[str, tuple[Callable[[Path], None], str]] = {
    "grayscale_16bit_rgba_images": (_gray_16bit_rgba, "converted to 8-bit RGB, with one warning naming the files"),
}
# accepted on purpose, applied to g1 itself: its shards must still equal the reference's
G1_ACCEPTED = {
    "unreferenced_junk_files": lambda d: ((d / "junk.pkl").write_bytes(b"\x80\x04not read"),
                                          (d / "images" / "extra.png").write_bytes(b"x")),
    "free_form_source_field": lambda d: edit(d, lambda doc: doc.setdefault("source", {}).update(
        note="anything", nested={"a": [1]})),
}

FACTORY_ARGS = ["--labels", "noise:pixel:0.3", "--preset", "test", "--steps", "30", "--renders", "3",
                "--maxcount", "3", "--no-progress", "--cpus-per-actor", "1", "--num-cpus", "2"]


def run_driver(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled", "FACEGS_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "ray_jobs.build_dataset", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)


def shard_bytes(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / "shards").glob("*.tar"))}


@pytest.fixture(scope="module")
def factory_runs(good_subjects, tmp_path_factory) -> dict[str, Any]:
    """A reference run of the good subjects and one run of them beside every bad subject."""
    sandbox = tmp_path_factory.mktemp("sandbox")
    subjects = sandbox / "subjects"
    shutil.copytree(good_subjects, subjects)
    template = subjects / "g0"
    for kind, (mutate, _) in {**SUBJECT_KINDS, **SUBJECT_ACCEPTED}.items():
        d = subjects / f"b_{kind}"
        shutil.copytree(template, d, symlinks=True)
        edit(d, lambda doc, k=kind: doc.update(subject_id=f"b_{k}"))
        mutate(d)
    ref_list = sandbox / "good.txt"
    ref_list.write_text(f"{good_subjects / 'g0'}\n{good_subjects / 'g1'}\n")
    ref = run_driver(["--subjects", str(ref_list), "--out", str(sandbox / "ref"), *FACTORY_ARGS])
    assert ref.returncode == 0, ref.stdout + ref.stderr
    for mutate in G1_ACCEPTED.values():
        mutate(subjects / "g1")
    before = snapshot(sandbox, skip=(sandbox / "out",))
    r = run_driver(["--subjects", str(subjects), "--out", str(sandbox / "out"), *FACTORY_ARGS])
    return {"sandbox": sandbox, "ref": sandbox / "ref", "out": sandbox / "out", "run": r, "before": before,
            "summary": json.loads((sandbox / "out" / "summary.json").read_text()),
            "results": {row["subject_id"]: row for row in pq.read_table(sandbox / "out" / "results.parquet").to_pylist()}}


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(SUBJECT_KINDS))
def test_subject_kinds(kind, factory_runs):
    f, r, s = factory_runs, factory_runs["run"], factory_runs["summary"]
    assert r.returncode == 1, r.stdout + r.stderr  # some subjects failed for good, the run went on
    sid = f"b_{kind}"
    fails = {k: v for k, v in s["failures"].items()}
    # a subject whose own id is unusable is reported under its directory's name
    assert sid in fails, (kind, sorted(fails), r.stderr[-3000:])
    msg = fails[sid]["message"]
    for w in words_of(kind):
        assert w in msg, (kind, w, msg)
    assert fails[sid]["error_type"] == "InputError" and fails[sid]["attempts"] == 1
    assert "facegs-subject-" not in msg and "\n" not in msg
    assert f"FAILED {sid}" in r.stdout + r.stderr
    assert (f["out"] / "failures" / f"{sid}.json").is_file()  # its record, inside the root, under a safe name
    # the good subjects: complete, byte-identical to the reference run's shards
    assert {k for k, v in f["results"].items() if v["status"] == "done"} >= {"g0", "g1"}
    good = {k: v for k, v in shard_bytes(f["out"]).items() if k.startswith(("g0-", "g1-"))}
    assert good == shard_bytes(f["ref"])
    # nothing outside the output root: the sandbox is as it was, apart from out/
    assert snapshot(f["sandbox"], skip=(f["out"],)) == f["before"]
    assert not (f["sandbox"] / "escaped_b13.json").exists() and not (f["out"] / "failures" / "evil").exists()


def words_of(kind: str) -> tuple[str, ...]:
    return SUBJECT_KINDS[kind][1]


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(SUBJECT_ACCEPTED) + list(G1_ACCEPTED))
def test_subject_kinds_accepted_on_purpose(kind, factory_runs):
    f, r = factory_runs, factory_runs["run"]
    if kind in SUBJECT_ACCEPTED:
        res = f["results"][f"b_{kind}"]
        assert res["n_samples"] == 3
        (warn,) = res["warnings"]  # one warning for the subject, naming each converted file
        for part in ("converted to 8-bit RGB", "grayscale: images/cam_000.png", "16-bit: images/cam_001.png",
                     "RGBA (alpha dropped): images/cam_002.png", f"subject 'b_{kind}'"):
            assert part in warn, warn
        assert f"warning: subject 'b_{kind}'" in r.stdout + r.stderr
    else:  # applied to g1: its shards equal the reference's
        assert shard_bytes(f["out"])["g1-000000.tar"] == shard_bytes(f["ref"])["g1-000000.tar"]
