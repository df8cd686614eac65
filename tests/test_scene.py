"""facegs.scene (parameters, SH colour, PLY / tensor files) and facegs.fit.init."""

import math

import numpy as np
import pytest
import torch

from facegs.core import cameras as C
from facegs.fit.config import InitConfig
from facegs.fit.init import common_volume, initial_points, load_points3d, params_from_points
from facegs.splat import scene as S


def random_params(n=50, sh_degree=3, num_classes=19, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = S.make_params(torch.randn(n, 3, generator=g), torch.rand(n, 3, generator=g),
                      torch.randn(n, 3, generator=g) - 4, num_classes=num_classes, sh_degree=sh_degree)
    with torch.no_grad():
        for k in ("quats", "opacities", "shN", "logits"):
            p[k].copy_(torch.randn(p[k].shape, generator=g))
    return p


# ----------------------------------------------------------------------------------------------
# parameters and colours
# ----------------------------------------------------------------------------------------------


def test_make_params_shapes_and_activation():
    p = random_params(n=7, sh_degree=2, num_classes=19)
    assert p["means"].shape == (7, 3) and p["scales"].shape == (7, 3) and p["quats"].shape == (7, 4)
    assert p["opacities"].shape == (7,) and p["sh0"].shape == (7, 1, 3) and p["shN"].shape == (7, 8, 3)
    assert p["logits"].shape == (7, 19) and S.sh_degree_of(p) == 2
    q = S.make_params(torch.zeros(3, 3), torch.full((3, 3), 0.25), torch.full((3,), -3.0), sh_degree=0)
    means, quats, scales, opac = S.activated(q)
    assert torch.allclose(opac, torch.full((3,), 0.1)) and torch.allclose(scales, torch.full((3, 3), math.exp(-3)))
    assert torch.equal(quats, torch.tensor([[1.0, 0, 0, 0]] * 3)) and q["shN"].shape == (3, 0, 3)
    # degree 0 colour is SH_C0 * sh0 + 0.5 = the input rgb
    vm = torch.eye(4)[None]
    assert torch.allclose(S.sh_colors(q, vm), torch.full((1, 3, 3), 0.25), atol=1e-6)


def test_sh_colors_match_the_rasterizers_sh_path():
    from facegs.splat.torch_backend import prepare_colors

    p = random_params(n=40, sh_degree=3)
    vm = torch.stack([torch.tensor(C.look_at(np.array([2.0, 0.5, 3.0]), np.zeros(3)), dtype=torch.float32),
                      torch.tensor(C.look_at(np.array([-3.0, 1.0, -1.0]), np.zeros(3)), dtype=torch.float32)])
    for deg in range(4):
        ours = S.sh_colors(p, vm, deg)
        coeffs = torch.cat([p["sh0"], p["shN"]], 1)
        ref = prepare_colors(coeffs, p["means"], vm, 2, deg)
        assert torch.allclose(ours, ref, atol=1e-5), deg
    cl = S.colors_and_logits(p, vm)
    assert cl.shape == (2, 40, 22) and torch.equal(cl[1, :, 3:], p["logits"])


# ----------------------------------------------------------------------------------------------
# files
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sh_degree", [0, 1, 3])
def test_ply_round_trip_is_bit_identical(tmp_path, sh_degree):
    p = random_params(n=33, sh_degree=sh_degree)
    S.save_ply(tmp_path / "s.ply", p, label_set="celebamask19")
    q, info = S.load_ply(tmp_path / "s.ply")
    assert info["label_set"] == "celebamask19" and info["sh_degree"] == sh_degree
    for k in S.SCENE_KEYS:
        assert q[k].dtype == torch.float32 and torch.equal(q[k], p[k].detach()), k


def test_ply_header_has_the_standard_3dgs_fields(tmp_path):
    p = random_params(n=4, sh_degree=3)
    S.save_ply(tmp_path / "s.ply", p)
    header = S.read_ply_header(tmp_path / "s.ply")
    assert header[0] == "ply" and header[1] == "format binary_little_endian 1.0"
    assert "comment facegs label_set celebamask19" in header
    assert "element vertex 4" in header
    props = [ln.split()[2] for ln in header if ln.startswith("property")]
    assert all(ln.startswith("property float ") for ln in header if ln.startswith("property"))
    standard = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(45)]
                + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])
    assert props[: len(standard)] == standard
    assert props[len(standard):] == [f"class_logit_{i}" for i in range(19)]
    size = (tmp_path / "s.ply").stat().st_size
    assert size == len("\n".join(header)) + 1 + 4 * 4 * len(props)


def test_ply_f_rest_is_channel_major_like_3dgs(tmp_path):
    p = random_params(n=3, sh_degree=1)
    with torch.no_grad():
        p["shN"].copy_(torch.arange(27, dtype=torch.float32).reshape(3, 3, 3))  # [N, coeff, rgb]
    S.save_ply(tmp_path / "s.ply", p)
    header = S.read_ply_header(tmp_path / "s.ply")
    off = len("\n".join(header)) + 1
    names = S.ply_field_names(1, 19)
    rows = np.frombuffer((tmp_path / "s.ply").read_bytes()[off:], dtype="<f4").reshape(3, len(names))
    f_rest = rows[0, names.index("f_rest_0"): names.index("f_rest_0") + 9]
    # 3DGS: features_rest [N, coeff, rgb] stored transposed: R of coeffs 0..2, then G, then B
    assert f_rest.tolist() == [0, 3, 6, 1, 4, 7, 2, 5, 8]


def test_plain_3dgs_ply_without_logits_loads_with_zero_logits(tmp_path):
    p = random_params(n=5, sh_degree=0, num_classes=0)
    S.save_ply(tmp_path / "plain.ply", p)
    q, info = S.load_ply(tmp_path / "plain.ply")
    assert q["logits"].shape == (5, 19) and not q["logits"].any()
    assert torch.equal(q["means"], p["means"].detach())


def test_tensor_file_round_trip_weights_only(tmp_path):
    p = random_params(n=21, sh_degree=2)
    S.save_tensors(tmp_path / "s.pt", p, meta={"subject": "x", "steps": 3, "psnr": 21.5})
    blob = torch.load(tmp_path / "s.pt", weights_only=True)  # plain types only
    assert blob["format"] == "facegs.scene" and blob["sh_degree"] == 2
    q, info = S.load_tensors(tmp_path / "s.pt")
    assert info["meta"] == {"subject": "x", "steps": 3, "psnr": 21.5} and info["label_set"] == "celebamask19"
    for k in S.SCENE_KEYS:
        assert torch.equal(q[k], p[k].detach()), k


# ----------------------------------------------------------------------------------------------
# initialisation
# ----------------------------------------------------------------------------------------------

RADIUS = 0.1


def sphere_rig(n_views=12, size=32):
    """Cameras on a ring around a sphere of radius RADIUS at the origin; analytic silhouettes."""
    Ks, w2cs, fg = [], [], []
    K = C.intrinsics_from_fov(size, size, 40)
    for i in range(n_views):
        w2c = C.head_pose_to_w2c(360.0 * i / n_views, 25.0 * (-1) ** i, 0, 0.6)
        o, d = C.pixel_rays(K, w2c, size, size)
        t = -(d @ o)  # closest approach of each ray to the origin
        dist2 = np.square(o[None, None] + t[..., None] * d).sum(-1)
        Ks.append(K)
        w2cs.append(w2c)
        fg.append(dist2 <= RADIUS**2)
    images = np.broadcast_to(np.array([0.8, 0.4, 0.2]), (n_views, size, size, 3)).copy()
    return images, np.stack(Ks), np.stack(w2cs), np.stack(fg)


def test_common_volume_contains_the_target():
    images, Ks, w2cs, fg = sphere_rig()
    center, half = common_volume(Ks, w2cs, [(32, 32)] * len(Ks))
    assert np.linalg.norm(center) < 1e-6 and RADIUS < half < 0.6


def test_init_by_carving_puts_points_on_the_head():
    images, Ks, w2cs, fg = sphere_rig()
    cfg = InitConfig(num_points=500, grid_res=40, seed=3)
    xyz, rgb, src = initial_points(images, Ks, w2cs, cfg, fg=fg)
    r = np.linalg.norm(xyz, axis=1)
    assert src == "carve" and xyz.shape == (500, 3)
    assert r.max() < RADIUS * 1.25 and np.median(r) > RADIUS * 0.8  # on the hull's surface
    assert np.allclose(rgb, [0.8, 0.4, 0.2], atol=1e-6)
    xyz2, _, _ = initial_points(images, Ks, w2cs, cfg, fg=fg)
    assert np.array_equal(xyz, xyz2)  # deterministic


def test_init_from_points_and_uniform():
    images, Ks, w2cs, fg = sphere_rig()
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(3000, 3)) * 0.03
    xyz, rgb, src = initial_points(images, Ks, w2cs, InitConfig(num_points=1000), points=(pts, None))
    assert src == "points" and xyz.shape == (1000, 3) and np.abs(xyz).max() < 0.2
    assert np.allclose(rgb, [0.8, 0.4, 0.2], atol=1e-6)  # colours from the images when none given
    xyz, _, src = initial_points(images, Ks, w2cs, InitConfig(num_points=400))
    center, half = common_volume(Ks, w2cs, [(32, 32)] * len(Ks))
    assert src == "uniform" and np.abs(xyz - center).max() <= half + 1e-6


def test_init_from_manifest_points3d(tmp_path):
    from facegs.core.manifest import SubjectManifest

    np.savez(tmp_path / "pts.npz", xyz=np.zeros((4, 3)) + [0, 0, 1], rgb=np.full((4, 3), 255, np.uint8))
    m = SubjectManifest(subject_id="s", label_set="celebamask19", views=(), points3d="pts.npz", root=tmp_path)
    xyz, rgb = load_points3d(m)
    assert xyz.shape == (4, 3) and np.allclose(rgb, 1.0)


def test_params_from_points_uses_knn_scales():
    xyz = np.stack(np.meshgrid(*[np.arange(5) * 0.01] * 3, indexing="ij"), -1).reshape(-1, 3).astype(np.float32)
    p = params_from_points(xyz, np.full_like(xyz, 0.5), InitConfig(), sh_degree=1)
    s = torch.exp(p["scales"])
    assert torch.allclose(s[62], torch.full((3,), 0.01), rtol=1e-4)  # interior grid point: 3 NN at 1 cm
    assert torch.allclose(torch.sigmoid(p["opacities"]), torch.full((125,), 0.1))
    assert not p["logits"].any() and p["shN"].shape == (125, 3, 3)
