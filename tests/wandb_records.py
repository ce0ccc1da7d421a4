"""Reads an offline W&B run's ``.wandb`` file: a LevelDB-style log of ``wandb_internal_pb2.Record``s.

wandb >= 0.19 writes it from its Go core and no longer ships a Python reader; the format is
LevelDB's log (32 KiB blocks of checksum, length, type, data) after a 7-byte W&B header.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK, HEADER, W_AND_B_HEADER = 32768, 7, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list[wandb_internal_pb2.Record]:
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    out, chunks, offset = [], [], W_AND_B_HEADER
    while offset + HEADER <= len(data):
        room = BLOCK - offset % BLOCK
        if room < HEADER:  # block trailer: padding
            offset += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[offset : offset + HEADER])
        if kind == 0 and length == 0:  # zero padding at the end
            break
        chunks.append(data[offset + HEADER : offset + HEADER + length])
        offset += HEADER + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(chunks))
            out.append(record)
            chunks = []
    return out


def history(path: Path) -> list[dict]:
    """Each ``wandb.log`` call of the run as a dict of key -> decoded value."""
    rows = []
    for record in records(path):
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            )
    return rows
