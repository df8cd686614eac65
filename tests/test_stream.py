"""facegs.stream: the same shards read by facegs.shards.stream, webdataset, Ray Data and plain tarfile give
the same samples; splitting, resampling, shuffling, flips, remapping and unsafe tar members."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from s3_server import s3_fs, s3_server  # noqa: F401  (pytest fixtures)
from test_shards import H, W, make_samples
from torch.utils.data import DataLoader

from facegs.core.errors import InputError
from facegs.core.imageio import decode_gray_png, decode_label_png
from facegs.core.labels import get_label_set, mapping_lut
from facegs.shards.manifest import merge_manifest, read_manifest
from facegs.shards.stages import decode_sample, group_by_key, hflip_meta, per_worker_count, shuffle, split_shards
from facegs.shards.stream import ShardDataset, collate, to_tensor
from facegs.shards.tarsafe import UnsafeTarMemberError, iter_tar_members
from facegs.shards.writer import commit_subject

torch.set_num_threads(1)
COUNTS = {"subjA": 5, "subjB": 3, "subjC": 7}  # maxcount 3 -> shards of 3, 2, 3, 3, 3, 1 samples
N_TOTAL = sum(COUNTS.values())


def _write(url: str, storage_options: dict | None = None, rgb_format: str = "png") -> None:
    for subject, n in COUNTS.items():
        commit_subject(make_samples(subject, n), url, subject, maxcount=3, rgb_format=rgb_format,
                       storage_options=storage_options)
    merge_manifest(url, storage_options)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("stream") / "ds"
    _write(str(root))
    return root


def _by_key(samples) -> dict:
    out = {s["__key__"]: s for s in samples}
    assert len(out) == len(samples), "duplicate keys"
    return out


def assert_same_samples(a: list[dict], b: list[dict]) -> None:
    """Same keys, identical decoded arrays (values and dtypes) and identical metadata."""
    da, db = _by_key(a), _by_key(b)
    assert sorted(da) == sorted(db)
    for k in da:
        for fld in ("rgb", "seg", "conf", "ignore"):
            x, y = np.asarray(da[k][fld]), np.asarray(db[k][fld])
            assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y), (k, fld)
        assert da[k]["meta"] == db[k]["meta"], k


def _shard_paths(root: Path) -> list[str]:
    return [str(root / s) for s in read_manifest(str(root)).column("shard").to_pylist()]


def read_with_tarfile(paths: list[str]) -> list[dict]:
    out = []
    for p in paths:
        raw: dict[str, dict] = {}
        with tarfile.open(p) as tf:
            for m in tf:
                key, fld = m.name.split(".", 1)
                raw.setdefault(key, {"__key__": key, "__shard__": p})[fld] = tf.extractfile(m).read()
        out += [decode_sample(r) for r in raw.values()]
    return out


# ----------------------------------------------------------------------------------------------


def test_facegs_webdataset_and_tarfile_agree(dataset):
    import webdataset as wds

    ours = list(ShardDataset(str(dataset)))
    assert len(ours) == N_TOTAL
    for s in ours:
        assert s["rgb"].dtype == np.uint8 and s["rgb"].shape == (H, W, 3)
        assert s["seg"].dtype == np.uint8 and s["seg"].shape == (H, W)
        assert s["conf"].dtype == np.float32 and s["ignore"].dtype == bool
        assert set(np.unique(s["seg"])) <= {0, 1, 2, 3, 4, 5, 7, 17, 255}  # indices, never colours
    # the labels are the ones written
    src = {s.key: s for subj, n in COUNTS.items() for s in make_samples(subj, n)}
    for s in ours:
        assert np.array_equal(s["seg"], src[s["__key__"]].seg)
        assert np.array_equal(s["ignore"], src[s["__key__"]].ignore)
        assert np.abs(s["conf"] - src[s["__key__"]].conf).max() <= 0.5 / 255 + 1e-6

    paths = _shard_paths(dataset)

    def labels(data):
        return decode_label_png(data)

    def gray(data):
        return decode_gray_png(data, "wds")

    # register exact handlers for the label-like PNGs first: "rgb8" alone would turn them into RGB
    ds = (wds.WebDataset(paths, shardshuffle=False, empty_check=False)
          .decode(wds.handle_extension("seg.png", labels), wds.handle_extension("conf.png", gray),
                  wds.handle_extension("ignore.png", gray), "rgb8"))
    via_wds = [{"__key__": s["__key__"], "rgb": s["png"], "seg": s["seg.png"],
                "conf": s["conf.png"].astype(np.float32) / np.float32(255.0), "ignore": s["ignore.png"] >= 128,
                "meta": s["json"]} for s in ds]
    assert [s["__key__"] for s in via_wds] == [s["__key__"] for s in ours]  # same order, too
    assert_same_samples(ours, via_wds)
    assert_same_samples(ours, read_with_tarfile(paths))


def test_ray_data_reads_the_same_samples(dataset):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=1, include_dashboard=False, object_store_memory=100 * 1024**2,
             _node_ip_address="127.0.0.1", log_to_driver=False, configure_logging=False)
    try:
        rows = ray.data.read_webdataset(_shard_paths(dataset), decoder=None).take_all()
    finally:
        ray.shutdown()
    via_ray = [decode_sample({k: (bytes(v) if isinstance(v, (bytes, bytearray, memoryview)) else v)
                              for k, v in r.items() if k == "__key__" or not k.startswith("__")}) for r in rows]
    assert_same_samples(list(ShardDataset(str(dataset))), via_ray)


def test_s3_and_memory_roots_read_the_same(dataset, s3_fs):
    import fsspec

    local = list(ShardDataset(str(dataset)))
    _write(s3_fs.url("ds"), s3_fs.storage_options)
    from_s3 = list(ShardDataset(s3_fs.url("ds"), storage_options=s3_fs.storage_options))
    assert [s["__key__"] for s in from_s3] == [s["__key__"] for s in local]
    assert_same_samples(local, from_s3)
    # DataLoader workers (forked after s3fs was used here) open their own s3fs instances
    ds = ShardDataset(s3_fs.url("ds"), storage_options=s3_fs.storage_options)
    keys = list(DataLoader(ds, batch_size=None, num_workers=2, collate_fn=lambda s: s["__key__"]))
    assert sorted(keys) == sorted(s["__key__"] for s in local)
    mem = "memory://facegs-stream-test/ds"
    _write(mem)
    try:
        assert_same_samples(local, list(ShardDataset(mem)))
    finally:
        fsspec.filesystem("memory").rm(mem, recursive=True)


def test_rank_and_worker_splitting_is_disjoint_and_complete(dataset):
    assert split_shards(list("abcdef"), 1, 2, 1, 2) == ["d"]
    assert sorted(sum((split_shards(list("abcdefg"), r, 3, w, 2) for r in range(3) for w in range(2)), [])) == \
        list("abcdefg")
    keys_per_rank = []
    for rank in range(2):
        ds = ShardDataset(str(dataset), rank=rank, world_size=2)
        loader = DataLoader(ds, batch_size=None, num_workers=2, collate_fn=lambda s: s["__key__"])
        keys_per_rank.append(list(loader))
    a, b = map(set, keys_per_rank)
    assert not a & b and len(a) + len(b) == N_TOTAL == len(a | b)
    # rank from the environment when torch.distributed is not initialised
    env_keys = []
    for rank in range(3):
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("RANK", str(rank))
            mp.setenv("WORLD_SIZE", "3")
            env_keys += [s["__key__"] for s in ShardDataset(str(dataset))]
    assert sorted(env_keys) == sorted(a | b)


def test_resampled_epochs_have_exactly_n_samples_per_rank(dataset):
    assert [per_worker_count(7, w, 3) for w in range(3)] == [3, 2, 2]
    for rank in range(3):
        ds = ShardDataset(str(dataset), rank=rank, world_size=3, resampled=True, epoch_length=7, shuffle_buffer=4)
        assert len(ds) == 7 and len(list(ds)) == 7
        ds.set_epoch(1)
        loader = DataLoader(ds, batch_size=None, num_workers=2, collate_fn=lambda s: s["__key__"])
        assert len(list(loader)) == 7
    ds = ShardDataset(str(dataset), rank=0, world_size=1, resampled=True, epoch_length=40)
    assert len({s["__key__"] for s in ds}) > 1
    assert list(ShardDataset(str(dataset), resampled=True, epoch_length=0)) == []
    with pytest.raises(ValueError, match="epoch_length"):
        ShardDataset(str(dataset), resampled=True)


def test_shuffle_is_deterministic_per_seed_and_epoch(dataset):
    def keys(seed: int, epoch: int) -> list[str]:
        ds = ShardDataset(str(dataset), shuffle_shards=True, shuffle_buffer=6, seed=seed)
        ds.set_epoch(epoch)
        return [s["__key__"] for s in ds]

    e0 = keys(3, 0)
    assert e0 == keys(3, 0) and sorted(e0) == sorted(keys(3, 1))
    assert e0 != keys(3, 1) and e0 != keys(4, 0) and len(e0) == N_TOTAL
    assert list(shuffle(range(5), 1, np.random.default_rng(0))) == list(range(5))
    assert sorted(shuffle(range(50), 8, np.random.default_rng(0))) == list(range(50))


def test_flip_swaps_left_and_right_and_mirrors_the_camera(dataset):
    plain = _by_key(list(ShardDataset(str(dataset))))
    flipped = _by_key(list(ShardDataset(str(dataset), flip_prob=1.0)))
    lut = get_label_set("celebamask19").flip_lut()
    for k, f in flipped.items():
        p = plain[k]
        assert f["hflip"] and not p["hflip"]
        assert np.array_equal(f["rgb"], p["rgb"][:, ::-1]) and np.array_equal(f["seg"], lut[p["seg"][:, ::-1]])
        assert np.array_equal(f["conf"], p["conf"][:, ::-1]) and np.array_equal(f["ignore"], p["ignore"][:, ::-1])
        assert f["meta"]["yaw"] == -p["meta"]["yaw"] and f["meta"]["roll"] == -p["meta"]["roll"]
    f, p = next(iter(flipped.values())), plain[next(iter(flipped))]
    # subject's left eye was on the image's right (cols 20..24); mirrored, those pixels are r_eye at 7..11
    assert (p["seg"][8:11, 20:25] == 4).all() and (f["seg"][8:11, W - 25:W - 20] == 5).all()
    assert (f["seg"][8:11, 20:25] == 4).all()  # and the old r_eye became l_eye on the right
    # projecting a world point with the mirrored camera lands on the mirrored pixel
    X = np.array([0.1, -0.05, 2.0, 1.0])

    def project(meta):
        xc = np.asarray(meta["world_to_camera"]) @ X
        uvw = np.asarray(meta["K"]) @ xc[:3]
        return uvw[:2] / uvw[2]

    (u0, v0), (u1, v1) = project(p["meta"]), project(f["meta"])
    assert np.isclose(u1, W - u0) and np.isclose(v1, v0)
    assert hflip_meta(hflip_meta(p["meta"])) == p["meta"]


def test_remap_to_lapa11_matches_mapping_lut(dataset):
    plain = _by_key(list(ShardDataset(str(dataset))))
    lapa = list(ShardDataset(str(dataset), target_label_set="lapa11"))
    lut = mapping_lut("celebamask19", "lapa11")
    ls = get_label_set("lapa11")
    for s in lapa:
        assert s["seg"].dtype == np.uint8 and np.array_equal(s["seg"], lut[plain[s["__key__"]]["seg"]])
        assert s["meta"]["label_set"] == "lapa11" and s["meta"]["label_set_version"] == ls.version
    s = lapa[0]
    assert (s["seg"][12:15, 27:30] == ls.index("skin")).all()  # l_ear -> skin (lapa11.json)
    assert (s["seg"][8:11, 20:25] == ls.index("l_eye")).all() and (s["seg"][22:24, 0:3] == 255).all()
    with pytest.raises(KeyError):
        ShardDataset(str(dataset), target_label_set="nope")


def test_to_tensor_and_collate(dataset):
    ds = ShardDataset(str(dataset), transform=to_tensor)
    batch = next(iter(DataLoader(ds, batch_size=4, collate_fn=collate)))
    assert batch["image"].shape == (4, 3, H, W) and batch["image"].dtype == torch.float32
    assert 0.0 <= float(batch["image"].min()) and float(batch["image"].max()) <= 1.0
    assert batch["seg"].shape == (4, H, W) and batch["seg"].dtype == torch.uint8
    assert batch["conf"].dtype == torch.float32 and batch["ignore"].dtype == torch.bool
    assert len(batch["key"]) == 4 and isinstance(batch["meta"][0], dict)


# ----------------------------------------------------------------------------------------------
# unsafe and malformed tars


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> None:
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)


def _info(name: str, type_: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    i = tarfile.TarInfo(name)
    i.type, i.linkname = type_, linkname
    return i


@pytest.mark.parametrize("case,member", [
    ("dotdot", "../evil.json"),
    ("nested_dotdot", "a/../../evil.json"),
    ("absolute", "/etc/evil.json"),
    ("symlink", "x_00000.png"),
    ("hardlink", "x_00000.png"),
    ("device", "x_00000.png"),
    ("oversized", "x_00000.json"),
])
def test_unsafe_members_are_rejected_naming_shard_and_member(tmp_path, case, member):
    good = [(_info("ok_00000.json"), b"{}")]
    bad = {"symlink": (_info(member, tarfile.SYMTYPE, "/etc/passwd"), None),
           "hardlink": (_info(member, tarfile.LNKTYPE, "ok_00000.json"), None),
           "device": (_info(member, tarfile.CHRTYPE), None),
           "oversized": (_info(member), b"x" * 5000)}.get(case, (_info(member), b"{}"))
    (tmp_path / "shards").mkdir()
    _tar(tmp_path / "shards" / "evil-000000.tar", good + [bad])
    ds = ShardDataset(str(tmp_path), shards=["shards/evil-000000.tar"], max_member_bytes=4096, verify=False)
    with pytest.raises(UnsafeTarMemberError) as ei:
        list(ds)
    msg = str(ei.value)
    assert "shards/evil-000000.tar" in msg and repr(member) in msg and ei.value.member == member


def test_bad_shards_raise_or_are_skipped(dataset, tmp_path):
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "junk-000000.tar").write_bytes(b"this is not a tar file" * 40)
    with pytest.raises(InputError, match="junk-000000.tar"):
        list(ShardDataset(str(tmp_path), shards=["shards/junk-000000.tar"], verify=False))
    with pytest.raises(InputError, match="does not exist"):
        list(ShardDataset(str(tmp_path), shards=["shards/missing-000000.tar"], verify=False))
    # skip mode: the bad shard is logged and skipped, the good ones are read
    good = read_manifest(str(dataset)).column("shard").to_pylist()
    ds = ShardDataset(str(dataset), shards=good[:1] + ["shards/missing-000000.tar"] + good[1:2], on_error="skip",
                      verify=False)
    assert len(list(ds)) == 3 + 3
    # unknown members are ignored, never unpickled (webdataset's basichandlers would unpickle .pyd/.pkl)
    shard = good[0]
    fs_path = str(dataset / shard)
    with open(fs_path, "rb") as f:
        raw = next(group_by_key(iter_tar_members(f, shard), shard))
    out = decode_sample({**raw, "pyd": b"cos\nsystem\n(S'echo pwned'\ntR."})
    assert "pyd" not in out and out["__key__"] == raw["__key__"]
    # a sample missing a member is named precisely
    with pytest.raises(InputError, match="field 'seg.png'"):
        decode_sample({"__key__": "k_00000", "__shard__": "s.tar", "png": b"", "json": b"{}",
                       "conf.png": b"", "ignore.png": b""})


def test_group_by_key_on_plain_iterables():
    members = [("a_00000.png", b"1"), ("a_00000.json", b"2"), ("b_00000.png", b"3")]
    assert [s["__key__"] for s in group_by_key(members, "s")] == ["a_00000", "b_00000"]
    with pytest.raises(InputError, match="not adjacent"):
        list(group_by_key(members + [("a_00000.seg.png", b"4")], "s"))
    with pytest.raises(InputError, match="twice"):
        list(group_by_key([("a.png", b""), ("a.png", b"")], "s"))
