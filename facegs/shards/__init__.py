"""Stage 4, WebDataset shards through fsspec: writing, the dataset root, reading.

In: samples (:class:`~.encode.Sample`: RGB, labels, confidence, ignore, alpha, JSON metadata). Out:
reproducible tar shards published atomically, per-shard records and ``manifest.parquet`` under a
dataset root (local, S3, memory), and a streaming reader for training.

- :mod:`.schema`: members, metadata (:func:`~.schema.sample_meta`) and the manifest schema.
- :mod:`.encode`: samples -> member bytes. :mod:`.tar`: reproducible tars. :mod:`.writer`: shards and commits.
- :mod:`.root`: the dataset root and shard records. :mod:`.scan`: committed records and orphans. :mod:`.manifest`: the merged manifest.
- :mod:`.tarsafe`: checked tar reading. :mod:`.stages`: reader stages. :mod:`.integrity`: shards checked against
  the manifest while they stream. :mod:`.stream`: :class:`~.stream.ShardDataset`.
- :mod:`.sheet`: a contact sheet of a dataset's samples.
"""
