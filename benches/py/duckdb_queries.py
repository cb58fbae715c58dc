"""DuckDB's side of `sb-bench query`: run each SQL statement over the dataset RUNS times, each
time from a fresh connection (views over read_parquet with Hive partitions, then the query and
its full result), and print per statement the median ms, the row count and the sum of the last
numeric column (integers; floats rounded), as JSON.

Usage: duckdb_queries.py DATASET RUNS '["SELECT ...", ...]'
"""
import json
import os
import statistics
import sys
import time

import duckdb


def checksum(rows, types):
    numeric = [i for i, t in enumerate(types) if t in ("NUMBER", "BIGINT", "INTEGER", "DOUBLE", "HUGEINT", "FLOAT", "DECIMAL")]
    idx = numeric[-1] if numeric else None
    if idx is None:
        return 0
    return int(sum(int(round(r[idx])) for r in rows if r[idx] is not None))


def main(dataset, runs, statements):
    views = []
    for table in ("logs", "metrics"):
        path = os.path.join(dataset, table)
        if os.path.isdir(path):
            views.append(f"CREATE VIEW {table} AS SELECT * FROM read_parquet('{path}/**/*.parquet', hive_partitioning = true, "
                "hive_types = {'date': VARCHAR, 'hour': INTEGER})")
    out = []
    for sql in statements:
        times, rows, types = [], [], []
        for _ in range(runs):
            t = time.perf_counter()
            con = duckdb.connect()
            for v in views:
                con.execute(v)
            cur = con.execute(sql)
            rows = cur.fetchall()
            times.append((time.perf_counter() - t) * 1e3)
            types = [str(d[1]) for d in cur.description]
            con.close()
        out.append({"ms": statistics.median(times), "rows": len(rows), "checksum": checksum(rows, types)})
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]))
