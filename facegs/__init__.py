"""facegs: multi-view 3D Gaussian splatting label refinement for face parsing under extreme poses.

Its folders are the stages, in the order data flows (docs/architecture.md):
core -> ingest / synth -> parser -> label -> splat -> fit -> headframe -> render -> shards -> factory
-> train -> evaluate, and cli on top. A module imports only its own stage and earlier ones. The
library never imports Ray; ``ray_jobs/`` wires it to a cluster.

Conventions used everywhere (stated once here, repeated in docstrings where they matter):
- Cameras are OpenCV pinhole cameras: +x right, +y down, +z forward (into the scene).
- Extrinsics are world-to-camera 4x4 matrices ``[R t; 0 0 0 1]`` with ``x_cam = R x_world + t``.
- Intrinsics ``K`` are 3x3; pixel (i, j) (row i, column j) has its centre at continuous image
  coordinate ``(u, v) = (j + 0.5, i + 0.5)``, so a centred camera of width W has ``cx = W / 2``.
- Label maps are uint8 class indices in a named label set (default ``celebamask19``); 255 = ignore.
"""

__version__ = "0.1.0"
