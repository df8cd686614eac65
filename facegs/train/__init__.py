"""Training parsers: the loop, losses, augmentation, shard batches, fine-tuning steps, WiSE-FT.

In: labelled views (subject directories, CelebAMask-HQ-style folders) and shard datasets. Out: parser
checkpoints (:func:`facegs.parser.checkpoint.save_parser`) and per-epoch metrics. No Ray here:
``ray_jobs/finetune.py`` runs :mod:`.finetune` and :mod:`.epochs` under Ray Train.

- :mod:`.loop`: SGD, poly LR, :func:`~.loop.train_step`. :mod:`.losses`: OHEM and structure via consensus.
- :mod:`.augment`, :mod:`.backgrounds`: augmentation and background replacement.
- :mod:`.data`: labelled views as datasets. :mod:`.shard_batches`, :mod:`.mixing`: shard samples -> batches, mixing.
- :mod:`.base_parser`: the demo's base parser. :mod:`.finetune`: options and driver checks; :mod:`.epochs`: a worker's steps.
- :mod:`.wise`: WiSE-FT weight interpolation.
"""
