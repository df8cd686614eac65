"""Gaussian splatting: the scene, the rasterizer backends, the one RGB + label render.

In: a scene (dict of per-Gaussian tensors: means [N, 3], log-scales, quaternions wxyz, opacity
logits, SH colours, class logits [N, 19]) and cameras (``viewmats`` [C, 4, 4] world-to-camera,
``Ks`` [C, 3, 3], pixel centres at +0.5). Out: images [C, H, W, D], alphas [C, H, W, 1] and
gsplat's ``meta`` (for densification), differentiable.

- :mod:`.scene`: the parameter dict, activation, PLY and tensor files.
- :mod:`.rasterize`: :func:`~.rasterize.rasterize` (``gsplat.rasterization`` semantics) over the backends
  ``cpu`` (:mod:`.torch_backend` with the fused C++ compositing kernel of :mod:`.cpu_kernel`, the
  default on CPUs), :mod:`.torch_backend` (pure PyTorch, the reference) and :mod:`.gsplat_backend`
  (CUDA); :mod:`.projection`, :mod:`.tiles` and :mod:`.sh` are the torch backend's stages;
  :mod:`.reference` a dense reference.
- :mod:`.rgb_labels`: :func:`~.rgb_labels.render_rgb_labels`, RGB and class channels in one call.
"""
