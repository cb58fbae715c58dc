"""Count the rows of a Switchboard dataset with three independent Parquet readers.

    python3 tests/py/readers.py DATASET [--columns]

DATASET is a collector's `data_dir` (or `switchboard-demo/dataset`). For every table present
(`logs`, `metrics`, `limits`, `dlr`: a directory holding at least one committed `*.parquet` file)
the rows are counted by Spark (pyspark, local mode, the table's directory with its `date=`/`hour=`
partitions discovered), by DuckDB (`read_parquet('<table>/**/*.parquet', hive_partitioning =
true)`) and by pyarrow datasets (hive partitioning). Prints one JSON object,
`{"<table>": {"spark": n, "duckdb": n, "pyarrow": n}, ...}`, and exits non-zero with a message
on stderr when a reader fails, does not see the `date` and `hour` partition columns, or the
readers disagree. With `--columns` each reader also counts the non-null values of every column,
which makes it decode every column, and those counts must agree too.

Needs `pyspark`, `duckdb` and `pyarrow` (tests/py/requirements.txt) and a Java runtime (17 or
newer) for Spark.
"""
import atexit
import json
import os
import shutil
import sys
import tempfile
import time

TABLES = ("logs", "metrics", "limits", "dlr")
PARTITIONS = ("date", "hour")


def tables_present(dataset):
    """Table name -> directory, for the tables with at least one committed file."""
    out = {}
    for name in TABLES:
        root = os.path.join(dataset, name)
        for d, dirs, files in os.walk(root):
            # Files being written are hidden (`.part-….parquet.tmp`); no reader looks at them.
            if any(f.endswith(".parquet") and not f.startswith((".", "_")) for f in files):
                out[name] = root
                break
    return out


def describe(e):
    """One line for a reader's exception; for a Java one, its message and its root cause's."""
    java = getattr(e, "java_exception", None)
    if java is not None:
        try:
            top, cause = java.toString(), java
            while cause.getCause() is not None:
                cause = cause.getCause()
            text = top if cause.equals(java) else f"{top} (caused by {cause.toString()})"
        except Exception:
            text = str(e)
    else:
        text = f"{type(e).__name__}: {e}"
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return " ".join(lines[:2]) if lines else type(e).__name__


def quote(s):
    return "'" + s.replace("'", "''") + "'"


def spark_session():
    """A small local Spark: one core, a small driver heap, no UI, no log (failures surface as
    exceptions, summarized by `describe`)."""
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    # Spark's launcher puts SPARK_CONF_DIR on the driver's class path, where log4j finds this.
    conf_dir = tempfile.mkdtemp(prefix="readers-spark-")
    atexit.register(shutil.rmtree, conf_dir, ignore_errors=True)
    with open(os.path.join(conf_dir, "log4j2.properties"), "w") as f:
        f.write("rootLogger.level = off\nrootLogger.appenderRef.stderr.ref = console\n"
                "appender.console.type = Console\nappender.console.name = console\n"
                "appender.console.target = SYSTEM_ERR\nappender.console.layout.type = PatternLayout\n"
                "appender.console.layout.pattern = spark: %p %c{1}: %m%n\n"
                # Spark announces the level it sets for the Python driver unless it is the root's.
                "logger.gw.name = org.apache.spark.api.python.PythonGatewayServer\nlogger.gw.level = off\n")
    os.environ["SPARK_CONF_DIR"] = conf_dir
    from pyspark.sql import SparkSession
    spark = (SparkSession.builder.master("local[1]").appName("switchboard-readers")
             .config("spark.driver.memory", "512m")
             .config("spark.driver.bindAddress", "127.0.0.1")
             # A short run: the JIT's first tier and a serial GC start faster (the demo's dataset on 2
             # cores: about 55 s -> 35 s for the whole run).
             .config("spark.driver.extraJavaOptions", "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC")
             .config("spark.ui.enabled", "false")
             .config("spark.ui.showConsoleProgress", "false")
             .config("spark.sql.shuffle.partitions", "1")
             .config("spark.sql.session.timeZone", "UTC")
             .getOrCreate())
    spark.sparkContext.setLogLevel("OFF")
    return spark


def count_spark(spark, root, columns):
    from pyspark.sql import functions as F
    df = spark.read.option("basePath", root).parquet(root)
    names = df.columns
    rows = df.count()
    counts = None
    if columns:
        row = df.select([F.count(F.col(f"`{c}`")).alias(c) for c in names]).collect()[0]
        counts = {c: row[c] for c in names}
    return rows, names, counts


def count_duckdb(con, root, columns):
    source = f"read_parquet({quote(root + '/**/*.parquet')}, hive_partitioning = true)"
    names = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()]
    rows = con.execute(f"SELECT count(*) FROM {source}").fetchone()[0]
    counts = None
    if columns:
        exprs = ", ".join(f'count("{c}")' for c in names)
        counts = dict(zip(names, con.execute(f"SELECT {exprs} FROM {source}").fetchone()))
    return rows, names, counts


def count_pyarrow(root, columns):
    import pyarrow.dataset as ds
    d = ds.dataset(root, format="parquet", partitioning="hive")
    names = d.schema.names
    if not columns:
        return d.count_rows(), names, None
    t = d.to_table()
    return t.num_rows, names, {c: len(t.column(c)) - t.column(c).null_count for c in names}


def main(argv):
    args = [a for a in argv if not a.startswith("--")]
    flags = [a for a in argv if a.startswith("--")]
    if len(args) != 1 or any(f != "--columns" for f in flags):
        print("usage: readers.py DATASET [--columns]", file=sys.stderr)
        return 2
    dataset, columns = os.path.abspath(args[0]), "--columns" in flags
    tables = tables_present(dataset)
    if not tables:
        print(f"readers: no table with Parquet files under {dataset} (looked for {', '.join(TABLES)})",
              file=sys.stderr)
        return 2

    problems = []
    result = {t: {} for t in tables}
    col_counts = {t: {} for t in tables}
    timings = {}

    def run(reader, table, count):
        started = time.monotonic()
        try:
            rows, names, counts = count()
        except Exception as e:  # any failure of a reader is a finding, not a crash
            result[table][reader] = None
            problems.append(f"{table}: {reader} failed: {describe(e)}")
            return
        finally:
            timings[reader] = timings.get(reader, 0.0) + time.monotonic() - started
        result[table][reader] = rows
        missing = [p for p in PARTITIONS if p not in names]
        if missing:
            problems.append(f"{table}: {reader} does not see the partition column(s) {', '.join(missing)}")
        if counts is not None:
            col_counts[table][reader] = counts

    started = time.monotonic()
    try:
        spark = spark_session()
    except Exception as e:
        spark = None
        problems.append(f"spark did not start: {describe(e)}")
    timings["spark start"] = time.monotonic() - started
    try:
        import duckdb
        con = duckdb.connect()
    except Exception as e:
        con = None
        problems.append(f"duckdb did not start: {describe(e)}")

    for table, root in tables.items():
        if spark is not None:
            run("spark", table, lambda: count_spark(spark, root, columns))
        else:
            result[table]["spark"] = None
        if con is not None:
            run("duckdb", table, lambda: count_duckdb(con, root, columns))
        else:
            result[table]["duckdb"] = None
        run("pyarrow", table, lambda: count_pyarrow(root, columns))

        counted = {r: n for r, n in result[table].items() if n is not None}
        if len(set(counted.values())) > 1:
            problems.append(f"{table}: row counts disagree: "
                            + ", ".join(f"{r} {n}" for r, n in counted.items()))
        per = col_counts[table]
        if len(per) > 1:
            for c in sorted(set().union(*[set(v) for v in per.values()])):
                seen = {r: v.get(c) for r, v in per.items()}
                if len(set(seen.values())) > 1:
                    problems.append(f"{table}: non-null counts of column {c!r} disagree: "
                                    + ", ".join(f"{r} {n}" for r, n in seen.items()))
    if spark is not None:
        spark.stop()

    print(json.dumps(result, sort_keys=False))
    if os.environ.get("READERS_TIMINGS"):
        print("readers: seconds " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()), file=sys.stderr)
    if problems:
        print(f"readers: the readers fail or disagree on {dataset}:", file=sys.stderr)
        for p in problems:
            print("  - " + p, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
