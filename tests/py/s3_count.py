"""Count a table on an S3 server as a plain Parquet reader would: pyarrow lists and reads every
`*.parquet` below the prefix (S3FileSystem, path-style endpoint), DuckDB counts the rows and the
distinct (node, stream, seq). Prints `rows=N distinct=M`.

Usage: s3_count.py <endpoint> <bucket> <prefix of the table>
"""

import sys

import duckdb
import pyarrow.dataset as ds
from pyarrow import fs


def main() -> None:
    endpoint, bucket, prefix = sys.argv[1:4]
    scheme, host = endpoint.split("://", 1)
    s3 = fs.S3FileSystem(
        endpoint_override=host,
        scheme=scheme,
        access_key="test",
        secret_key="test",
        region="us-east-1",
        force_virtual_addressing=False,
    )
    # Hive partitions as the collector writes them; names starting with '.' or '_' are skipped,
    # as pyarrow, Spark and Hive do.
    table = ds.dataset(f"{bucket}/{prefix}", filesystem=s3, format="parquet", partitioning="hive").to_table()
    con = duckdb.connect()
    con.register("logs", table)
    rows, distinct = con.execute(
        "SELECT count(*), (SELECT count(*) FROM (SELECT DISTINCT node, stream, seq FROM logs)) FROM logs"
    ).fetchone()
    print(f"rows={rows} distinct={distinct}")


if __name__ == "__main__":
    main()
