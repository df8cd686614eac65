"""Stage 3, novel views: head poses -> cameras -> rendered RGB and automatically cleaned labels.

In: a fitted scene, its head frame and the capture's framing. Out: :class:`~.views.RenderedView`
per pose: RGB [H, W, 3] uint8, labels, confidence, ignore mask, alpha, camera and pose.

- :mod:`.poses`: pose sampling and the cameras that realise poses. :mod:`.views`: rendering novel views.
- :mod:`.cleanup`: probabilities -> training labels (small parts, holes, left/right); :mod:`.components`: its component steps.
"""
