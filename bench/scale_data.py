"""A synthetic dataset of N rows for the bench's scale section: IMDB's train split repeated, each
copy's texts prefixed with its copy number ("copy 3: ...") so that no two rows are equal and no
cache can take one size for another. Written a copy at a time (one row group each), so making
10 million rows needs no more memory than one copy.

usage: scale_data.py SOURCE_TRAIN_PARQUET OUT_PARQUET ROWS
prints {"rows": N, "bytes": size of OUT, "text_bytes": bytes of text}
"""

import json
import os
import sys

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq


def main() -> None:
    source, out, rows = sys.argv[1], sys.argv[2], int(sys.argv[3])
    base = pq.read_table(source, columns=["text", "label"])
    tmp = out + ".tmp"
    written, copy, text_bytes = 0, 0, 0
    with pq.ParquetWriter(tmp, base.schema, compression="snappy") as w:
        while written < rows:
            part = base.slice(0, min(base.num_rows, rows - written))
            ty = part.schema.field("text").type
            text = pc.binary_join_element_wise(pa.scalar(f"copy {copy}:", ty), part["text"], pa.scalar(" ", ty))
            part = pa.table({"text": text, "label": part["label"]}, schema=base.schema)
            text_bytes += pc.sum(pc.binary_length(text)).as_py()
            w.write_table(part)
            written += part.num_rows
            copy += 1
    os.replace(tmp, out)
    print(json.dumps({"rows": written, "bytes": os.path.getsize(out), "text_bytes": text_bytes}))


if __name__ == "__main__":
    main()
