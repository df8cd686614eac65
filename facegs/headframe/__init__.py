"""The subject's own head frame, in which novel views are posed (+x the subject's LEFT, +y up, +z out of the face).

In: a fitted scene (rendered at the capture views into labelled surface points) and the capture
rig's cameras. Out: a :class:`~.frame.HeadFrame` (``world_from_head`` [4, 4]) with diagnostics, and
its source (``"labels+symmetry"``, ``"labels"``, ``"profile+symmetry"``, ``"cameras+symmetry"``,
``"cameras"``) and reliability.

- :mod:`.template`: landmark positions of the reference head. :mod:`.landmarks`: denoised landmarks from points.
- :mod:`.estimate`: robust similarity fit with a left/right check. :mod:`.priors`: the rig prior.
- :mod:`.visible`: labelled points of the surface the cameras see. :mod:`.symmetry`: the face's mirror plane.
- :mod:`.inplane`: the rotation about a known x axis (pitch), scale and origin from landmarks.
- :mod:`.profile`: the same without labels: the reference face profile registered in the mirror plane.
- :mod:`.place`: :func:`~.place.place_head_frame`, three estimates checked against each other, with a reliability.
- :mod:`.calibrate`: template and profile calibration, accuracy.
"""
