"""facegs: multi-view 3D Gaussian splatting label refinement for face parsing under extreme poses.

Data flows one way: ingest (facegs.ingest, facegs.synth) -> label (facegs.parsing) -> fit (facegs.fit.loop)
-> render (facegs.splat.rasterize) -> shard (facegs.shards.writer) -> train -> evaluate (facegs.evaluate.metrics).
The library never imports Ray; ``ray_jobs/`` wires it to a cluster.

Conventions used everywhere (stated once here, repeated in docstrings where they matter):
- Cameras are OpenCV pinhole cameras: +x right, +y down, +z forward (into the scene).
- Extrinsics are world-to-camera 4x4 matrices ``[R t; 0 0 0 1]`` with ``x_cam = R x_world + t``.
- Intrinsics ``K`` are 3x3; pixel (i, j) (row i, column j) has its centre at continuous image
  coordinate ``(u, v) = (j + 0.5, i + 0.5)``, so a centred camera of width W has ``cx = W / 2``.
- Label maps are uint8 class indices in a named label set (default ``celebamask19``); 255 = ignore.
"""

__version__ = "0.1.0"
