"""The subject's own capture views as shard samples: the baseline "fine-tune on the raw views".

In: a subject manifest with labels (initial or ground truth). Out: :class:`facegs.shards.encode.Sample`
objects with ``source`` "capture", written by the same shard writer as the renders.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from facegs.core.cameras import w2c_to_head_pose
from facegs.core.errors import InputError
from facegs.core.imageio import read_confidence, read_labels, read_rgb
from facegs.core.labels import CANONICAL, remap
from facegs.core.manifest import SubjectManifest
from facegs.shards.encode import Sample
from facegs.shards.schema import sample_meta


def capture_samples(m: SubjectManifest, chash: str, world_from_head: np.ndarray | None = None,
                    label_field: str = "labels", rgb_format: str = "jpg") -> Iterator[Sample]:
    """The subject's own capture views as shard samples (``source`` "capture") with the label
    maps named by ``label_field`` (``labels``: the initial, noisy labels; ``gt_labels``: ground
    truth), their confidence (1 where absent) and no ignore mask. Pose angles come from the views'
    ``pose`` (head-relative) or, when missing, from ``world_from_head``; views without either are
    skipped. The baseline "fine-tune on the raw capture views" of the experiments uses this."""
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
        meta = sample_meta(m.subject_id, i, source="capture", width=v.width, height=v.height, pose=(yaw, pitch, roll),
                           K=v.K, world_to_camera=v.world_to_camera, world_from_head=T, rgb_format=rgb_format,
                           config_hash=chash)
        yield Sample(rgb=read_rgb(m.path(v.image)), seg=seg, conf=conf, ignore=np.zeros(seg.shape, bool), meta=meta)
