"""Reads our token shards (crates/shards) with numpy, for the Python side of the benchmarks."""
import struct
from pathlib import Path

import numpy as np


def read_split(tokdir, split):
    """Our shard format (crates/shards, version 2): header, offsets, labels, full lengths, ids,
    token types. Returns per example the ids, the label (a class id, a multi-hot float list, or a
    score) and the token types (None without sentence pairs)."""
    ids_all, labels_all, types_all = [], [], []
    for f in sorted(Path(tokdir).glob(f"{split}-*.shard")):
        b = f.read_bytes()
        assert b[:8] == b"FTSHARD\0", f
        version, width, n, t = struct.unpack_from("<IIQQ", b, 8)
        assert version == 2, f"{f}: shard format {version}; rerun the tokenize stage"
        kind, count, flags = struct.unpack_from("<III", b, 48)
        words = max(1, (count + 31) // 32) if kind == 1 else 1
        at = 64
        off = np.frombuffer(b, dtype="<u8", count=n + 1, offset=at)
        at += 8 * (n + 1)
        lab = np.frombuffer(b, dtype="<u4", count=n * words, offset=at).reshape(n, words)
        at += 4 * n * words + 4 * n
        ids = np.frombuffer(b, dtype="<u2" if width == 2 else "<u4", count=t, offset=at)
        at += width * t
        types = np.frombuffer(b, dtype="u1", count=t, offset=at) if flags & 1 else None
        for i in range(n):
            ids_all.append(ids[off[i]:off[i + 1]].astype(np.int64))
            types_all.append(None if types is None else types[off[i]:off[i + 1]].astype(np.int64))
            if kind == 0:
                labels_all.append(int(lab[i, 0].astype(np.int32)))
            elif kind == 2:
                labels_all.append(float(lab[i, :1].view("<f4")[0]))
            else:
                labels_all.append([float((lab[i, j // 32] >> (j % 32)) & 1) for j in range(count)])
    return ids_all, labels_all, types_all
