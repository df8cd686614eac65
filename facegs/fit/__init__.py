"""Stage 2, the joint fit: one Gaussian scene per subject, shared geometry for RGB and labels.

In: a subject manifest and its initial labels (in memory or from its files). Out: a
:class:`~.loop.FitResult`: the fitted scene (detached CPU tensors), per-step metrics and a summary
with the final evaluation (PSNR, agreement with the input labels and, when known, the ground truth).

- :mod:`.config`: :class:`~.config.FitConfig` and presets. :mod:`.data`: views as tensors (:class:`~.data.ViewData`).
- :mod:`.init`: initial Gaussians (SfM points, visual hull, uniform). :mod:`.losses`: RGB and label losses.
- :mod:`.densify`: gsplat's DefaultStrategy, capped. :mod:`.loop`: :func:`~.loop.fit_step`, :func:`~.loop.fit_subject`.
- :mod:`.evaluate`: one render of every view against the inputs and ground truth.
- :mod:`.support`: the input labels lifted onto the Gaussians (label votes), and the rule that gives a
  Gaussian the class its views back when they do not back its own (applied after the fit by
  :func:`facegs.factory.subject.place`).
"""
