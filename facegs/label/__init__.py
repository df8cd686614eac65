"""Stage 1, labelling: initial (noisy) labels for every capture view of a subject.

In: a validated subject manifest and a parser (:mod:`facegs.parser`) or a noise model on ground
truth (experiments). Out: :class:`~.views.ViewLabels` per view (labels [H, W] uint8 canonical,
8-bit confidence [H, W] float32) in memory for the fit, or written into the subject (``facegs label``).

- :mod:`.views`: :func:`~.views.initial_labels` and the ``facegs label`` writer.
- :mod:`.noise`: seeded noise models (pixel, left/right swap, boundary, pose) for benchmarks.
"""
