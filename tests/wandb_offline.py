"""Read back what W&B wrote in offline mode, without W&B's own (private, moving) reader.

A ``run-*.wandb`` file is a 7-byte header starting ``:W&B`` and then 32 KiB blocks of records,
each ``<uint32 crc32, uint16 length, uint8 type>`` and a chunk of a serialized
``wandb_internal_pb2.Record``; a record split across blocks comes as FIRST, MIDDLE.., LAST chunks.
A complete file ends with the run's ``exit`` record.

The file is written by the wandb-core service process, not by the caller. ``run.finish()`` waits
for the exit record to be *handled*, then only publishes "inform_finish" (fire and forget): the
service flushes and closes the file afterwards, on its own time. Read right after ``finish()``,
the file can still be just its 7-byte header or its first records (no history at all). So read a
run only through :func:`finish_and_read`, which waits for the file to be complete.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any

HEADER, BLOCK, CHUNK_HEADER = 7, 32 * 1024, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def finish_and_read(run: Any, timeout: float = 120.0) -> Path:
    """Finish ``run`` and return its run file once the service has written all of it.

    ``wandb.teardown()`` waits for the service process (which this process started) to exit,
    which closes every run file; the poll on the exit record covers a service this process does
    not own (``teardown`` then returns at once) and fails loudly instead of reading a partial file.
    """
    import wandb

    path = Path(run.settings.sync_file)  # this run's own file, by id
    run.finish()
    wandb.teardown()
    deadline = time.monotonic() + timeout
    while not is_complete(path):
        if time.monotonic() > deadline:
            kinds = [r.WhichOneof("record_type") for r in records(path)] if path.exists() else []
            raise AssertionError(f"{path} has no exit record after {timeout}s: {kinds}")
        time.sleep(0.05)
    return path


def is_complete(path: str | Path) -> bool:
    """Whether the run file exists and ends with the run's exit record."""
    path = Path(path)
    if not path.exists() or path.stat().st_size <= HEADER:
        return False
    parsed = records(path)
    return bool(parsed) and parsed[-1].WhichOneof("record_type") == "exit"


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
        if len(chunk) < length:  # a file still being written: its last chunk is not all there
            break
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


def summary(path: str | Path) -> dict[str, Any]:
    """The run's final summary, as the runs table and ``run.summary`` read it."""
    final: dict[str, Any] = {}
    for record in records(path):
        if record.WhichOneof("record_type") == "summary":
            for item in record.summary.update:
                key = item.key or "/".join(item.nested_key)
                final[key] = json.loads(item.value_json)
    return final
