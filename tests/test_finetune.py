"""Parser fine-tuning on shards: the batch transform and mixing (fast, no Ray), argument checks, and
the Ray Train job on a real local Ray with 2 CPU workers (slow): disjoint ranks and a falling loss;
a worker killed mid-run resumes from the last checkpoint; a new driver continues the run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from test_parser_training import write_subject
from torch.utils.data import DataLoader

from facegs.core import cameras as C
from facegs.core.errors import InputError
from facegs.core.imageio import write_labels, write_rgb
from facegs.core.labels import IGNORE_INDEX, get_label_set, mapping_lut
from facegs.parser.bisenet import BiSeNet
from facegs.parser.checkpoint import load_parser, save_parser
from facegs.shards.encode import Sample
from facegs.shards.manifest import merge_manifest, read_manifest
from facegs.shards.schema import sample_key
from facegs.shards.stream import ShardDataset
from facegs.shards.writer import commit_subject
from facegs.train.augment import AugmentConfig, augment
from facegs.train.mixing import MixedIterable, load_labelled_item, mix_positions, scan_labelled_dir
from facegs.train.shard_batches import ShardTrainTransform, batches_per_epoch, collate_train, make_train_loader

torch.set_num_threads(1)
CANON = get_label_set()
SIZE = 64
SUBJECTS, PER_SUBJECT, MAXCOUNT = 4, 8, 4  # -> 8 shards of 4 samples


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------


def blob_sample(subject: str, v: int, rng: np.random.Generator, size: int = SIZE) -> Sample:
    """A learnable view: a 'face' whose classes can be read from their palette colours (+ noise)."""
    lab = np.zeros((size, size), np.uint8)
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.integers(size // 3, 2 * size // 3, size=2)
    r, e = size // 4, max(2, size // 20)
    lab[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = CANON.index("skin")
    lab[(yy < cy - r + 3) & ((yy - cy) ** 2 + (xx - cx) ** 2 < (r + 4) ** 2)] = CANON.index("hair")
    lab[(yy - cy + 3) ** 2 + (xx - cx - r // 2) ** 2 < e * e] = CANON.index("l_eye")  # subject's left: image right
    lab[(yy - cy + 3) ** 2 + (xx - cx + r // 2) ** 2 < e * e] = CANON.index("r_eye")
    lab[(yy - cy - r // 2) ** 2 + (xx - cx) ** 2 < e * e] = CANON.index("u_lip")
    rgb = np.clip(CANON.palette[lab].astype(np.int16) + rng.integers(-20, 20, (size, size, 3)), 0, 255).astype(np.uint8)
    conf = rng.uniform(0.5, 1.0, (size, size)).astype(np.float32)
    ignore = np.zeros((size, size), bool)
    ignore[-3:, :] = True
    meta = {"schema_version": 1, "key": sample_key(subject, v), "subject_id": subject, "view_index": v,
            "source": "render", "width": size, "height": size, "yaw": float(rng.uniform(-90, 90)),
            "pitch": float(rng.uniform(-30, 30)), "roll": 0.0, "K": C.intrinsics_from_fov(size, size, 40.0).tolist(),
            "world_to_camera": np.eye(4).tolist(), "world_from_head": np.eye(4).tolist(),
            "label_set": "celebamask19", "label_set_version": 1, "config_hash": "0123abcd", "facegs_version": "0.1.0"}
    return Sample(rgb, lab, conf, ignore, meta)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ft") / "ds"
    for s in range(SUBJECTS):
        rng = np.random.default_rng(s)
        commit_subject([blob_sample(f"s{s}", v, rng) for v in range(PER_SUBJECT)], str(root), f"s{s}",
                       maxcount=MAXCOUNT, rgb_format="png")
    merge_manifest(str(root))
    return root


@pytest.fixture(scope="module")
def init_ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    p = tmp_path_factory.mktemp("ft_init") / "init.pt"
    save_parser(p, BiSeNet(19, 0.125), input_size=(SIZE, SIZE))
    return p


@pytest.fixture(scope="module")
def hq_dir(tmp_path_factory) -> Path:
    """A CelebAMask-HQ style directory: 64 px images, 32 px label maps in the official HQ order."""
    root = tmp_path_factory.mktemp("hq")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    hq = get_label_set("celebamask_hq")
    for i in range(6):
        lab = np.zeros((32, 32), np.uint8)
        lab[8:24, 8:24] = hq.index("skin")
        lab[14:18, 14:18] = hq.index("nose")  # 2 in HQ order, 10 canonical
        lab[0:3, :] = hq.index("hair")        # 13 in HQ order, 17 canonical
        write_rgb(root / "images" / f"{i}.jpg", np.full((64, 64, 3), 40 * i, np.uint8))
        write_labels(root / "labels" / f"{i}.png", lab, "celebamask_hq")
    write_rgb(root / "images" / "unlabelled.jpg", np.zeros((64, 64, 3), np.uint8))  # skipped
    return root


def decoded(shards: Path, n: int = 4) -> list[dict]:
    return list(ShardDataset(str(shards)))[:n]


# ----------------------------------------------------------------------------------------------
# fast: transform, labelled data, mixing, loader
# ----------------------------------------------------------------------------------------------


def test_transform_shapes_ignore_and_weight(shards):
    s = decoded(shards, 1)[0]
    plain = ShardTrainTransform(32, None, use_confidence=True)(s)
    assert plain["image"].shape == (3, 32, 32) and plain["image"].dtype == torch.float32
    assert plain["labels"].shape == (32, 32) and plain["labels"].dtype == torch.int64
    assert plain["weight"].shape == (32, 32) and plain["weight"].dtype == torch.float32
    assert (plain["labels"][-1] == IGNORE_INDEX).all()  # the ignore strip (bottom rows) became 255
    assert plain["key"] == s["__key__"] and plain["source"] == "shard"
    assert plain["yaw"] == pytest.approx(s["meta"]["yaw"])
    assert float(plain["image"].mean()) < 1.5 and float(plain["image"].min()) < 0  # ImageNet-normalised
    full = ShardTrainTransform(SIZE, None, use_confidence=True)(s)  # no resize: conf passes through
    assert torch.allclose(full["weight"], torch.from_numpy(s["conf"]))
    keep = ShardTrainTransform(SIZE, None, ignore_to_255=False)(s)
    assert "weight" not in keep and np.array_equal(keep["labels"].numpy(), s["seg"].astype(np.int64))


def test_transform_augmentation_is_seeded_per_seed_epoch_key(shards):
    a, b = decoded(shards, 2)
    cfg = AugmentConfig(out_size=48)
    t = ShardTrainTransform(48, cfg, seed=7, use_confidence=True)
    x1, x2 = t(a), t(a)
    assert torch.equal(x1["image"], x2["image"]) and torch.equal(x1["labels"], x2["labels"])
    assert not torch.equal(t(b)["labels"], x1["labels"])
    t.set_epoch(1)
    assert not torch.equal(t(a)["image"], x1["image"])
    t2 = ShardTrainTransform(48, cfg, seed=7, use_confidence=True)  # another process / worker / rank
    assert torch.equal(t2(a)["image"], x1["image"])
    # the confidence map rides along without changing the draws: labels equal augment()'s own result
    seg = np.where(a["ignore"], np.uint8(IGNORE_INDEX), a["seg"])
    _, ref = augment(a["rgb"], seg, t2.rng_for(a["__key__"]), cfg, CANON)
    assert np.array_equal(x1["labels"].numpy(), ref.astype(np.int64))
    assert np.array_equal(ShardTrainTransform(48, cfg, seed=7)(a)["labels"].numpy(), ref.astype(np.int64))
    # weights follow the image: ~0 where the crop left the source (labels 255 there), the conf values
    # (0.5..1) inside; only border pixels blend the two (bilinear)
    w, lab = x1["weight"].numpy(), x1["labels"].numpy()
    assert (w[lab != IGNORE_INDEX] > 0.4).mean() > 0.95 and w.min() >= 0 and w.max() <= 1


def test_transform_remaps_to_the_training_label_set(shards):
    s = decoded(shards, 1)[0]
    out = ShardTrainTransform(SIZE, None, label_set="lapa11")(s)
    want = mapping_lut("celebamask19", "lapa11")[np.where(s["ignore"], 255, s["seg"]).astype(np.uint8)]
    assert np.array_equal(out["labels"].numpy(), want.astype(np.int64))
    with pytest.raises(KeyError, match="unknown label set"):
        ShardTrainTransform(SIZE, None, label_set="nope")


def test_labelled_dir_celebamask_hq_layout(hq_dir, tmp_path):
    items = scan_labelled_dir(hq_dir, "celebamask_hq")
    assert [it.key for it in items] == [str(i) for i in range(6)]  # unlabelled image skipped
    smp = load_labelled_item(items[0])
    assert smp["rgb"].shape == (32, 32, 3) and smp["seg"].shape == (32, 32)  # image resized to the mask
    out = ShardTrainTransform(32, None, use_confidence=True)(smp)
    lab = out["labels"].numpy()
    assert lab[16, 16] == CANON.index("nose") and lab[1, 5] == CANON.index("hair") and lab[10, 10] == 1
    assert out["source"] == "mix" and out["key"] == "mix/0" and bool((out["weight"] == 1).all())
    with pytest.raises(InputError, match="label set declared"):
        scan_labelled_dir(hq_dir)
    with pytest.raises(KeyError, match="unknown label set"):
        scan_labelled_dir(hq_dir, "celebamask_hq_v9")
    with pytest.raises(InputError, match="does not exist"):
        scan_labelled_dir(tmp_path / "missing", "celebamask_hq")
    bad = tmp_path / "bad"
    (bad / "images").mkdir(parents=True)
    (bad / "labels").mkdir()
    write_labels(bad / "labels" / "x.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(InputError, match="have no image"):
        scan_labelled_dir(bad, "celebamask19")


def test_labelled_subject_directories(tmp_path):
    write_subject(tmp_path / "subjA", "subjA", np.random.default_rng(0), n=3, size=32)
    items = scan_labelled_dir(tmp_path)
    assert [it.key for it in items] == ["subjA/v0", "subjA/v1", "subjA/v2"]
    assert items[0].label_set == "celebamask19" and items[0].yaw == -80
    with pytest.raises(InputError, match="manifests say"):
        scan_labelled_dir(tmp_path, "lapa11")


def test_mix_positions_are_exact_and_spread():
    for ratio in (0.0, 0.1, 0.25, 0.5, 0.9):
        for seed in range(5):
            m = mix_positions(40, ratio, np.random.default_rng(seed))
            assert int(m.sum()) in (int(np.floor(40 * ratio)), int(np.ceil(40 * ratio)))
    m = mix_positions(40, 0.25, np.random.default_rng(0))
    assert np.diff(np.nonzero(m)[0]).max() <= 4  # evenly spread, no bursts


def test_mixed_iterable_ratio_determinism_and_counts(shards, hq_dir):
    items = scan_labelled_dir(hq_dir, "celebamask_hq")
    t = ShardTrainTransform(32, AugmentConfig(out_size=32), seed=1)

    def build(rank=0, world=1):
        ds = ShardDataset(str(shards), resampled=True, epoch_length=40, seed=3, rank=rank, world_size=world)
        return MixedIterable(ds, items, 0.25, transform=t, seed=3, rank=rank, world_size=world)

    a = list(build())
    assert len(a) == 40 and sum(s["source"] == "mix" for s in a) == 10
    b = list(build())
    assert [s["key"] for s in a] == [s["key"] for s in b]
    assert all(torch.equal(x["image"], y["image"]) for x, y in zip(a, b))
    m = build()
    m.set_epoch(1)
    c = list(m)
    assert [s["key"] for s in c] != [s["key"] for s in a] and t.epoch == 1
    t.set_epoch(0)
    # 2 DataLoader workers: the per-rank total and the ratio hold (20 + 20 samples, 5 + 5 mixed)
    loader = make_train_loader(build(), batch_size=4, num_workers=2)
    got = [k for bt in loader for k in bt["source"]]
    assert len(got) == 40 and got.count("mix") == 10
    assert len(loader) == 10 == batches_per_epoch(40, 4, 2)
    # two ranks draw disjoint labelled items (6 items, 2 readers)
    r0 = {s["key"] for s in build(0, 2) if s["source"] == "mix"}
    r1 = {s["key"] for s in build(1, 2) if s["source"] == "mix"}
    assert r0 and r1 and not (r0 & r1)
    with pytest.raises(ValueError, match="without transform"):
        MixedIterable(ShardDataset(str(shards), transform=t), items, 0.1, transform=t)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        MixedIterable(ShardDataset(str(shards)), items, 1.0)


def test_loader_drops_partial_batches_and_collates():
    assert batches_per_epoch(18, 4, 1) == 4 and batches_per_epoch(18, 4, 2) == 4  # 9 + 9 -> 2 + 2
    samples = [{"image": torch.zeros(3, 4, 4), "labels": torch.zeros(4, 4, dtype=torch.int64), "yaw": 1.0,
                "pitch": 2.0, "key": f"k{i}", "source": "shard"} for i in range(3)]
    b = collate_train(samples)
    assert b["image"].shape == (3, 3, 4, 4) and b["yaw"].dtype == torch.float32 and b["key"] == ["k0", "k1", "k2"]
    loader = make_train_loader(samples, batch_size=2)  # a list is a fine dataset, too
    assert isinstance(loader, DataLoader) and len(list(loader)) == 1


# ----------------------------------------------------------------------------------------------
# argument checks (before any Ray work)
# ----------------------------------------------------------------------------------------------


def _cfg(shards, init_ckpt, tmp_path, **kw) -> dict:
    base = dict(shards=str(shards), init=str(init_ckpt), out=str(tmp_path / "out" / "ft.pt"),
                storage_path=str(tmp_path / "runs"), name="run", workers=2, epochs=6, epoch_length=16,
                batch_size=4, size=SIZE, lr=0.05, loader_workers=1, report_keys=64)
    base.update(kw)
    return base


def test_bad_arguments_fail_clearly(shards, init_ckpt, tmp_path, hq_dir, capsys):
    from facegs.train.finetune import FinetuneConfig, prepare
    from ray_jobs.finetune import main

    def prep(**kw):
        return prepare(FinetuneConfig.from_any({**_cfg(shards, init_ckpt, tmp_path), **kw}))

    with pytest.raises(InputError, match="no manifest"):
        prep(shards=str(tmp_path))
    with pytest.raises(ValueError, match="8 shard.*--workers is 9"):
        prep(workers=9)
    with pytest.raises(KeyError, match="unknown label set"):
        prep(mix_dir=str(hq_dir), mix_label_set="nope", mix_ratio=0.2)
    with pytest.raises(ValueError, match="needs --mix-dir"):
        prep(mix_ratio=0.2)
    with pytest.raises(ValueError, match="no full batch"):
        prep(epoch_length=3)
    with pytest.raises(InputError, match="--init.*not found"):
        prep(init=str(tmp_path / "nope.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="--init"):
        prep(init=str(tmp_path / "junk.pt"))
    with pytest.raises(ValueError, match="unknown fine-tuning options"):
        FinetuneConfig.from_any({**_cfg(shards, init_ckpt, tmp_path), "lr_typo": 1})
    info = prep(mix_dir=str(hq_dir), mix_label_set="celebamask_hq", mix_ratio=0.2)
    assert len(info["shards"]) == SUBJECTS * PER_SUBJECT // MAXCOUNT and info["mix_items"] == 6
    assert info["init"]["width"] == 0.125 and info["init"]["label_set"] == "celebamask19"
    # the CLI: exit status 2 and a message naming the problem
    args = ["--shards", str(tmp_path), "--init", str(init_ckpt), "--out", str(tmp_path / "o.pt"),
            "--storage-path", str(tmp_path / "r"), "--name", "x"]
    assert main(args) == 2
    assert "no manifest" in capsys.readouterr().err
    assert main(args[:1] + [str(shards)] + args[2:] + ["--mix-dir", str(hq_dir), "--mix-ratio", "0.1",
                                                         "--mix-label-set", "bogus"]) == 2
    assert "unknown label set 'bogus'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "disjoint" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------
# slow: the Ray Train job on a local Ray (2 CPUs)
# ----------------------------------------------------------------------------------------------

RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           # the controller polls workers for reports; 2 s by default throttles 0.5 s test epochs
           "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    old = {k: os.environ.get(k) for k in RAY_ENV}
    os.environ.update(RAY_ENV)
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024**2,
             _node_ip_address="127.0.0.1", log_to_driver=False, configure_logging=False)
    try:
        yield ray
    finally:
        ray.shutdown()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def shard_keys(shards: Path) -> dict[str, set[str]]:
    return {row["shard"]: set(row["keys"]) for row in read_manifest(str(shards)).to_pylist()}


@pytest.mark.slow
def test_ddp_two_workers_disjoint_ranks_and_falling_loss(local_ray, shards, init_ckpt, tmp_path):
    from ray_jobs.finetune import run_finetune

    r = run_finetune(_cfg(shards, init_ckpt, tmp_path, epochs=6))
    hist = r["history"]
    assert [h["epoch"] for h in hist] == list(range(6)) and r["resumed_from_epoch"] == -1
    by_shard = shard_keys(shards)
    for h in hist:
        assert h["world_size"] == 2 and h["samples"] == 32 and h["device"] == "cpu" and not h["amp"]
        r0, r1 = h["ranks"]
        assert r0["samples"] == r1["samples"] == 16 and r0["steps"] == r1["steps"] == 4  # equal: no DDP hang
        assert not r0["keys_truncated"] and not r1["keys_truncated"]
        k0, k1 = set(r0["keys"]), set(r1["keys"])
        assert k0 and k1 and not (k0 & k1), h["epoch"]  # disjoint sample keys
        assert not (set(r0["shards"]) & set(r1["shards"])) and len(r0["shards"]) == len(r1["shards"]) == 4
        for rk, keys in ((r0, k0), (r1, k1)):  # each rank only ever sees its own shards' samples
            assert keys <= set().union(*(by_shard[s] for s in rk["shards"]))
    assert hist[-1]["loss"] < 0.75 * hist[0]["loss"], [h["loss"] for h in hist]
    # the output: a facegs checkpoint at the training size, and the metrics next to it
    pm = load_parser(r["out"])
    assert pm.meta["source"] == "facegs" and pm.input_size == (SIZE, SIZE) and pm.meta["width"] == 0.125
    assert pm.meta["extra"]["finetune"]["epoch"] == 5
    assert pm.predict_labels(np.zeros((1, SIZE, SIZE, 3), np.uint8)).shape == (1, SIZE, SIZE)
    m = json.loads(Path(r["metrics_path"]).read_text())
    assert Path(r["metrics_path"]).name == "ft.metrics.json" and len(m["history"]) == 6


@pytest.mark.slow
def test_yaw_selection_and_background_replacement_in_the_job(local_ray, shards, init_ckpt, tmp_path):
    """--abs-yaw-range reaches the workers' streams (every key trained on is in range) and background
    replacement runs in them (labels-only fallback: these shards have no alpha)."""
    from ray_jobs.finetune import run_finetune

    yaw = {s["__key__"]: s["meta"]["yaw"] for s in ShardDataset(str(shards))}
    r = run_finetune(_cfg(shards, init_ckpt, tmp_path, workers=1, epochs=2, name="sel", abs_yaw_range=(45, 90),
                          background_prob=1.0))
    keys = [k for h in r["history"] for rk in h["ranks"] for k in rk["keys"]]
    assert keys and all(45 <= abs(yaw[k]) <= 90 for k in keys)  # (unique keys per rank and epoch)
    assert all(h["samples"] == 16 for h in r["history"])
    assert {k for k in yaw if abs(yaw[k]) >= 45} & set(keys)


@pytest.mark.slow
def test_worker_killed_mid_run_resumes_from_checkpoint_then_new_driver_continues(local_ray, shards, init_ckpt,
                                                                                hq_dir, tmp_path):
    from ray_jobs.finetune import run_finetune

    marker, events = tmp_path / "crashed.json", tmp_path / "events.jsonl"
    # rank 1 dies (os._exit) after one step of epoch 2, once; sleep_s lets the controller (polling
    # every 0.2 s here) register epoch 1's checkpoint first, so that the resume point is exact.
    # A quarter of every rank's samples comes from the CelebAMask-HQ style directory.
    cfg = _cfg(shards, init_ckpt, tmp_path, epochs=4, loader_workers=0, max_failures=1, events_log=str(events),
               mix_dir=str(hq_dir), mix_label_set="celebamask_hq", mix_ratio=0.25,
               fail_injection={"rank": 1, "epoch": 2, "after_steps": 1, "marker": str(marker), "sleep_s": 1.5})
    r = run_finetune(cfg)
    assert json.loads(marker.read_text())["epoch"] == 2  # the failure happened, in epoch 2
    hist = r["history"]
    assert [h["epoch"] for h in hist] == [0, 1, 2, 3]
    for h in hist:
        r0, r1 = h["ranks"]
        assert r0["samples"] == r1["samples"] == 16 and r0["mix_samples"] == r1["mix_samples"] == 4
        m0, m1 = ({k for k in rk["keys"] if k.startswith("mix/")} for rk in (r0, r1))
        assert m0 and m1 and not (m0 & m1) and not (set(r0["keys"]) & set(r1["keys"]))
    assert [h["resumed_from_epoch"] for h in hist] == [-1, -1, 1, 1]  # after the failure: checkpoint epoch + 1
    assert r["worker_restarts"] == 1 and r["driver_runs"] == 1
    starts = [json.loads(line)["epoch"] for line in events.read_text().splitlines()
              if json.loads(line)["event"] == "epoch_start"]
    assert starts == [0, 1, 2, 2, 3]  # epoch 2 ran twice (partly, then whole); nothing else re-ran
    assert len(starts) < 2 * 4
    first_loss = hist[0]["loss"]

    # the driver "dies" after the run; the same command with more epochs continues it
    r2 = run_finetune({**cfg, "epochs": 5, "fail_injection": None})
    assert r2["resumed_from_epoch"] == 3 and r2["driver_runs"] == 2
    assert [h["epoch"] for h in r2["history"]] == [0, 1, 2, 3, 4] and r2["history"][0]["loss"] == first_loss
    starts = [json.loads(line)["epoch"] for line in events.read_text().splitlines()
              if json.loads(line)["event"] == "epoch_start"]
    assert starts[5:] == [4]
    assert load_parser(r2["out"]).meta["extra"]["finetune"]["epoch"] == 4
