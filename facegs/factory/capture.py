"""TODO docstring."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

import facegs
from facegs.core.errors import InputError
from facegs.core.labels import CANONICAL, get_label_set
from facegs.core.manifest import SubjectManifest
from facegs.shards.encode import Sample
from facegs.shards.schema import sample_key


def capture_samples(m: SubjectManifest, chash: str, world_from_head: np.ndarray | None = None,
                    label_field: str = "labels", rgb_format: str = "jpg") -> Iterator[Sample]:
    """The subject's own capture views as shard samples (``source`` "capture") with the label
    maps named by ``label_field`` (``labels``: the initial, noisy labels; ``gt_labels``: ground
    truth), their confidence (1 where absent) and no ignore mask. Pose angles come from the views'
    ``pose`` (head-relative) or, when missing, from ``world_from_head``; views without either are
    skipped. The baseline "fine-tune on the raw capture views" of the experiments uses this."""
    from facegs.core.cameras import w2c_to_head_pose
    from facegs.core.imageio import read_confidence, read_labels, read_rgb
    from facegs.core.labels import remap

    ls = get_label_set(CANONICAL)
    T = world_from_head if world_from_head is not None else m.world_from_head
    for i, v in enumerate(m.views):
        rel = getattr(v, label_field)
        if rel is None:
            raise InputError(f"view has no {label_field}", subject=m.subject_id, view=v.view_id, field=label_field)
        if v.pose is not None:
            yaw, pitch, roll = (float(v.pose[k]) for k in ("yaw", "pitch", "roll"))
        elif T is not None:
            yaw, pitch, roll = w2c_to_head_pose(v.world_to_camera, T)
        else:
            continue
        seg = remap(read_labels(m.path(rel)), m.label_set, CANONICAL)
        conf = (read_confidence(m.path(v.confidence)) if v.confidence and label_field == "labels"
                else np.ones(seg.shape, np.float32))
        meta = {"schema_version": 1, "key": sample_key(m.subject_id, i), "subject_id": m.subject_id,
                "view_index": i, "source": "capture", "width": v.width, "height": v.height,
                "yaw": round(float(yaw), 6), "pitch": round(float(pitch), 6), "roll": round(float(roll), 6),
                "K": np.asarray(v.K).tolist(), "world_to_camera": np.asarray(v.world_to_camera).tolist(),
                "world_from_head": None if T is None else np.asarray(T, np.float64).tolist(),
                "label_set": ls.name, "label_set_version": ls.version, "rgb_format": rgb_format,
                "config_hash": chash, "facegs_version": facegs.__version__}
        yield Sample(rgb=read_rgb(m.path(v.image)), seg=seg, conf=conf, ignore=np.zeros(seg.shape, bool), meta=meta)
