"""Real structure-from-motion as an outside check of realism and of ingestion.

A synthetic subject (facegs.synth) is rendered with its exact cameras; the calibration is stripped
and pycolmap must recover the cameras from the pixels alone (``facegs ingest --format images``).
If SfM registers almost every view and, after a similarity alignment of the camera centres, the
rotations agree within 2 degrees, then (a) the renders are geometrically consistent and textured
like a real capture, and (b) the SfM ingestion path (pycolmap -> undistortion -> manifest) keeps the
cameras right. bench/sfm_realism.py runs the same check and records the numbers.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from fixtures_io import write_textured_scene_subject

from facegs.core.errors import InputError
from facegs.core.imageio import write_rgb
from facegs.ingest import ingest
from facegs.ingest.compare import sfm_cross_check
from facegs.ingest.validate import validate_subject

pytestmark = pytest.mark.slow

N_VIEWS = 48
HAS_SYNTH = importlib.util.find_spec("facegs.synth.generate") is not None


def test_sfm_ingestion_recovers_cameras_of_a_textured_scene(tmp_path):
    """The images format on a scene with known cameras (independent of facegs.synth)."""
    write_textured_scene_subject(tmp_path / "scene", n=20, res=192)
    r = sfm_cross_check(tmp_path / "scene", tmp_path / "work", num_threads=2)
    print("textured scene:", json.dumps(r, indent=1))
    assert r["num_registered"] == 20, r
    assert r["rotation_median_deg"] <= 2.0 and r["center_median_rel"] <= 0.05, r
    # (the focal length is not asserted: on this symmetric scene SfM trades it against the radial
    # distortion of SIMPLE_RADIAL; rotations and centres are unaffected)
    assert validate_subject(tmp_path / "work" / "sfm_subject", min_views=3) == []
    assert (tmp_path / "work" / "sfm_subject" / "sfm" / "cameras.bin").is_file()


def test_sfm_on_unmatchable_images_fails_clearly(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "noise").mkdir()
    for i in range(4):
        write_rgb(tmp_path / "noise" / f"n{i}.png", rng.integers(0, 256, (64, 64, 3)).astype(np.uint8))
    with pytest.raises(InputError) as ei:
        ingest("images", tmp_path / "noise", tmp_path / "out", num_threads=2)
    assert ei.value.subject == "out" and ei.value.field == "images"
    assert "registered" in str(ei.value) or "reconstructed nothing" in str(ei.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not HAS_SYNTH, reason="the synthetic generator facegs.synth.generate is not available")
def test_sfm_registers_and_recovers_synthetic_cameras(tmp_path):
    from facegs.synth.generate import generate_subject

    m = generate_subject(tmp_path / "synth", "synth0", seed=0, rig="facescape", res=256, background="world")
    assert len(m.views) == N_VIEWS
    r = sfm_cross_check(m.root, tmp_path / "work", num_threads=2)
    print("sfm realism:", json.dumps(r, indent=1))
    assert r["num_registered"] >= 0.9 * N_VIEWS, r
    assert r["rotation_median_deg"] <= 2.0, r
    assert r["center_median_rel"] <= 0.05, r
    assert validate_subject(tmp_path / "work" / "sfm_subject", min_views=3) == []
