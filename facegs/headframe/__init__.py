"""The subject's own head frame, in which novel views are posed (+x the subject's LEFT, +y up, +z out of the face).

In: labelled 3D points (the fitted Gaussians: means, class probabilities, opacity) or the capture
rig's cameras. Out: a :class:`~.frame.HeadFrame` (``world_from_head`` [4, 4]) with diagnostics, and
its source (``"scene"`` or ``"cameras"``).

- :mod:`.template`: landmark positions of the reference head. :mod:`.landmarks`: denoised landmarks from points.
- :mod:`.estimate`: robust similarity fit with a left/right check. :mod:`.priors`: the rig prior.
- :mod:`.scene`: :func:`~.scene.place_head_frame` for a fitted scene. :mod:`.calibrate`: template calibration, accuracy.
"""
