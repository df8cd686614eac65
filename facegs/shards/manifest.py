"""The merged manifest of a dataset root, ``manifest.parquet``: what readers trust."""

from __future__ import annotations

import io
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from facegs.core.errors import InputError
from facegs.core.storage import put_bytes_atomic
from facegs.shards.root import DATASET_MANIFEST, DatasetRoot, Verify
from facegs.shards.scan import list_committed
from facegs.shards.schema import (
    SHARD_MANIFEST_SCHEMA,
    shard_record_table,
)


def merge_manifest(root_url: str | DatasetRoot, storage_options: dict[str, Any] | None = None,
                   verify: Verify = "size") -> pa.Table:
    """Merge all committed records into ``root/manifest.parquet`` (written whole) and return the table."""
    root = DatasetRoot.open(root_url, storage_options)
    table = shard_record_table([r.as_dict() for r in list_committed(root, verify=verify)])
    buf = io.BytesIO()
    # list children keep Arrow's name "item", so the file's schema equals SHARD_MANIFEST_SCHEMA exactly
    pq.write_table(table, buf, use_compliant_nested_type=False)
    put_bytes_atomic(root.fs, root.join(DATASET_MANIFEST), buf.getvalue())
    return table


def read_manifest(root_url: str | DatasetRoot, storage_options: dict[str, Any] | None = None) -> pa.Table:
    """Read ``root/manifest.parquet``; raises :class:`InputError` if absent or of another schema."""
    root = DatasetRoot.open(root_url, storage_options)
    path = root.join(DATASET_MANIFEST)
    try:
        data = root.fs.cat_file(path)
    except FileNotFoundError:
        raise InputError("dataset has no manifest (run merge_manifest after writing shards)", path=path) from None
    table = pq.read_table(io.BytesIO(data))
    if table.schema != SHARD_MANIFEST_SCHEMA and table.schema.equals(SHARD_MANIFEST_SCHEMA):
        table = table.cast(SHARD_MANIFEST_SCHEMA)  # e.g. written elsewhere with list children named "element"
    if not table.schema.equals(SHARD_MANIFEST_SCHEMA, check_metadata=True):
        raise InputError(f"manifest schema differs from SHARD_MANIFEST_SCHEMA: {table.schema}", path=path)
    return table
