"""Reads our token shards (crates/shards) with numpy, for the Python side of the benchmarks."""
import struct
from pathlib import Path

import numpy as np


def read_split(tokdir, split):
    """Our shard format (crates/shards): header, offsets, labels, full lengths, ids."""
    ids_all, labels_all = [], []
    for f in sorted(Path(tokdir).glob(f"{split}-*.shard")):
        b = f.read_bytes()
        assert b[:8] == b"FTSHARD\0", f
        width, n, t = struct.unpack_from("<IQQ", b, 12)
        off = np.frombuffer(b, dtype="<u8", count=n + 1, offset=64)
        lab = np.frombuffer(b, dtype="<i4", count=n, offset=64 + 8 * (n + 1))
        ids = np.frombuffer(b, dtype="<u2" if width == 2 else "<u4", count=t, offset=64 + 8 * (n + 1) + 8 * n)
        for i in range(n):
            ids_all.append(ids[off[i]:off[i + 1]].astype(np.int64))
            labels_all.append(int(lab[i]))
    return ids_all, labels_all
