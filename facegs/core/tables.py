"""Parquet tables written streaming, in row groups, and published whole (never half-written).

:class:`ParquetStream` holds at most ``rows_per_group`` rows in memory; the file is written through
:func:`facegs.core.storage.open_atomic`, so it appears at its final path only when the stream is
closed without an exception (local: temp file + rename; S3: one put or a completed multipart
upload). Used for ``manifest.parquet``, the per-subject index ``subjects.parquet`` and a run's
``results.parquet``: their size grows with the dataset, the writer's memory does not.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from facegs.core.storage import open_atomic

ROWS_PER_GROUP = 4096


class ParquetStream:
    """Rows appended with :meth:`add` go to ``path`` in row groups of ``rows_per_group``."""

    def __init__(self, writer: pq.ParquetWriter, schema: pa.Schema, rows_per_group: int) -> None:
        self.writer, self.schema, self.rows_per_group = writer, schema, rows_per_group
        self.rows: list[dict[str, Any]] = []
        self.num_rows = 0

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self.num_rows += 1
        if len(self.rows) >= self.rows_per_group:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            self.writer.write_table(pa.Table.from_pylist(self.rows, schema=self.schema))
            self.rows = []


@contextlib.contextmanager
def parquet_stream(fs: fsspec.AbstractFileSystem, path: str, schema: pa.Schema,
                   rows_per_group: int = ROWS_PER_GROUP) -> Iterator[ParquetStream]:
    """A :class:`ParquetStream` to ``path`` that is published whole when the block exits cleanly
    (an empty stream is a valid table with no rows). List children keep Arrow's name "item", so the
    file's schema equals ``schema`` exactly."""
    with open_atomic(fs, path) as f:
        sink = pa.PythonFile(f, mode="w")
        writer = pq.ParquetWriter(sink, schema, use_compliant_nested_type=False)
        stream = ParquetStream(writer, schema, rows_per_group)
        try:
            yield stream
            stream.flush()
        finally:
            writer.close()
