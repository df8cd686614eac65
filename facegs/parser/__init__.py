"""Face parsers: the BiSeNet model, its checkpoints, prediction.

In: checkpoint files (the published BiSeNet layout, facegs checkpoints, TorchScript; always loaded
with ``weights_only=True``) and RGB images [H, W, 3] uint8. Out: a
:class:`~.model.ParserModel` whose predictions are class probabilities [B, 19, H, W] in the
canonical label set.

- :mod:`.bisenet`: the network (built without downloads; the published checkpoint loads strictly).
- :mod:`.state_dict`: reading and checking BiSeNet state dicts. :mod:`.model`: :class:`~.model.ParserModel`.
- :mod:`.checkpoint`: :func:`~.checkpoint.load_parser`, :func:`~.checkpoint.save_parser`, TorchScript export.
- :mod:`.normalize`: input normalisation. :mod:`.predict`: batched prediction with flip test-time augmentation.
"""
