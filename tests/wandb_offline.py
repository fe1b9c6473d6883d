"""Read back what W&B wrote in offline mode, without W&B's own (private, moving) reader.

A ``run-*.wandb`` file is a 7-byte header starting ``:W&B`` and then 32 KiB blocks of records,
each ``<uint32 crc32, uint16 length, uint8 type>`` and a chunk of a serialized
``wandb_internal_pb2.Record``; a record split across blocks comes as FIRST, MIDDLE.., LAST chunks.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

HEADER, BLOCK, CHUNK_HEADER = 7, 32 * 1024, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: str | Path) -> list[Any]:
    from wandb.proto import wandb_internal_pb2

    raw = Path(path).read_bytes()
    assert raw[:4] == b":W&B", f"{path} is not a W&B run file"
    chunks: list[bytes] = []
    pending = b""
    position = HEADER
    while position + CHUNK_HEADER <= len(raw):
        left_in_block = BLOCK - position % BLOCK
        if left_in_block < CHUNK_HEADER:  # the block's tail is padding
            position += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", raw[position : position + CHUNK_HEADER])
        position += CHUNK_HEADER
        chunk = raw[position : position + length]
        position += length
        if kind == FULL:
            chunks.append(chunk)
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            chunks.append(pending + chunk)
            pending = b""
    parsed = []
    for chunk in chunks:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(chunk)
        parsed.append(record)
    return parsed


def history(path: str | Path) -> list[dict[str, Any]]:
    """Every ``wandb.log`` row of the run, in order, as ``{key: value}``."""
    rows = []
    for record in records(path):
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {
                    (item.key or "/".join(item.nested_key)): json.loads(item.value_json)
                    for item in record.history.item
                }
            )
    return rows


def metric_definitions(path: str | Path) -> dict[str, Any]:
    """``define_metric`` records of the run: name -> the MetricRecord."""
    return {
        record.metric.name or record.metric.glob_name: record.metric
        for record in records(path)
        if record.WhichOneof("record_type") == "metric"
    }
