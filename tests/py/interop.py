"""Independent clients of the bus and readers of the dataset, following docs/protocol.md only.

Used by tests/python_interop.rs. Subcommands:
  subscribe ENDPOINT LISTEN PREFIX EXPECTED TIMEOUT   receive log_batch payloads, print a JSON summary
  publish   ENDPOINT PREFIX NODE STREAM ROWS          publish ROWS records as one node, in two batches
  read      DATASET                                   read the logs table with pyarrow and DuckDB
  limits    ENDPOINT PREFIX RATE                      set a limits revision, wait for it, print a demand report
  dlr       ENDPOINT PREFIX CONNECTOR FORMAT ID [STATUS]  look up a message id at every node and at the one that
                                                        must hold it (or report a DLR for it), print the replies
Every wait is bounded; the exit code is non-zero on any protocol violation.
"""
import base64
import hashlib
import json
import sys
import threading
import time

import pyarrow as pa


def session(connect, listen=None):
    import zenoh
    cfg = {"mode": "peer", "connect": {"endpoints": [connect]}, "scouting": {"multicast": {"enabled": False}}}
    if listen:
        cfg["listen"] = {"endpoints": [listen]}
    return zenoh.open(zenoh.Config.from_json5(json.dumps(cfg)))


def subscribe(endpoint, listen, prefix, expected, timeout):
    s = session(endpoint, listen)
    lock = threading.Lock()
    seen = {}
    errors = []
    done = threading.Event()

    def on_sample(sample):
        try:
            reader = pa.ipc.open_stream(sample.payload.to_bytes())
            table = reader.read_all()
            meta = table.schema.metadata or {}
            if meta.get(b"switchboard.payload") != b"log_batch" or meta.get(b"switchboard.version") != b"1":
                errors.append("bad metadata %r" % meta)
            names = [f.name for f in table.schema]
            if names != ["seq", "ts", "observed_ts", "file", "offset", "level", "message", "raw",
                         "truncated", "invalid_utf8", "fields"]:
                errors.append("bad columns %r" % names)
            key = str(sample.key_expr)
            with lock:
                for seq in table.column("seq").to_pylist():
                    seen[(key, seq)] = seen.get((key, seq), 0) + 1
                if len(seen) >= expected:
                    done.set()
        except Exception as e:  # noqa: BLE001 - report any decoding failure as a protocol error
            errors.append(repr(e))

    sub = s.declare_subscriber(prefix + "/stream/*/log/*", on_sample)
    print("ready", flush=True)
    done.wait(timeout)
    sub.undeclare()
    s.close()
    keys = sorted({k for k, _ in seen})
    print(json.dumps({"rows": len(seen), "keys": keys, "errors": errors,
                      "max_seq": max((q for _, q in seen), default=-1)}), flush=True)
    return 0 if not errors else 1


def publish(endpoint, prefix, node, stream, rows):
    import zenoh
    s = session(endpoint)
    # Wait (bounded) for a collector's liveliness token, as an agent does.
    deadline = time.time() + 20
    while time.time() < deadline:
        replies = list(s.liveliness().get(prefix + "/collector/*", timeout=1.0))
        if any(r.ok is not None for r in replies):
            break
        time.sleep(0.1)
    else:
        print("no collector alive", file=sys.stderr)
        return 1
    fields_type = pa.map_(pa.field("keys", pa.string(), nullable=False), pa.field("values", pa.string()))
    schema = pa.schema([
        pa.field("seq", pa.uint64(), False), pa.field("ts", pa.timestamp("us", "UTC"), False),
        pa.field("observed_ts", pa.timestamp("us", "UTC"), False), pa.field("file", pa.string(), False),
        pa.field("offset", pa.uint64(), False), pa.field("level", pa.string()),
        pa.field("message", pa.string(), False), pa.field("raw", pa.binary()),
        pa.field("truncated", pa.bool_(), False), pa.field("invalid_utf8", pa.bool_(), False),
        pa.field("fields", fields_type, False),
    ], metadata={"switchboard.payload": "log_batch", "switchboard.version": "1"})
    now = int(time.time() * 1_000_000)
    key = "%s/stream/%s/log/%s" % (prefix, node, stream)
    half = rows // 2
    for lo, hi in ((0, half), (half, rows)):
        n = hi - lo
        batch = pa.record_batch([
            pa.array(range(lo, hi), pa.uint64()),
            pa.array([now + i for i in range(lo, hi)], pa.timestamp("us", "UTC")),
            pa.array([now] * n, pa.timestamp("us", "UTC")),
            pa.array(["python"] * n),
            pa.array([i * 10 for i in range(lo, hi)], pa.uint64()),
            pa.array(["info"] * n),
            pa.array(["python record %d" % i for i in range(lo, hi)]),
            pa.array([None] * n, pa.binary()),
            pa.array([False] * n),
            pa.array([False] * n),
            pa.array([[("msg_id", "py-%d" % i), ("lang", "python")] for i in range(lo, hi)], fields_type),
        ], schema=schema)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, schema) as w:
            w.write_batch(batch)
        s.put(key, sink.getvalue().to_pybytes(), congestion_control=zenoh.CongestionControl.BLOCK)
    # Let the last put leave before the session closes.
    time.sleep(0.5)
    s.close()
    return 0


def read(dataset):
    import duckdb
    import pyarrow.dataset as ds
    d = ds.dataset(dataset + "/logs", format="parquet", partitioning="hive")
    t = d.to_table(columns=["node", "stream", "seq", "msg_id", "hour"])
    per_node_pa = {}
    for node in t.column("node").to_pylist():
        per_node_pa[node] = per_node_pa.get(node, 0) + 1
    con = duckdb.connect()
    rows = con.execute(
        "SELECT node, count(*), count(DISTINCT (stream, seq)) FROM read_parquet(?, hive_partitioning = true) GROUP BY node",
        [dataset + "/logs/**/*.parquet"]).fetchall()
    per_node_duck = {n: c for n, c, _ in rows}
    distinct = {n: d for n, _, d in rows}
    point = con.execute(
        "SELECT count(*) FROM read_parquet(?, hive_partitioning = true) WHERE msg_id = 'py-7'",
        [dataset + "/logs/**/*.parquet"]).fetchone()[0]
    print(json.dumps({"pyarrow": per_node_pa, "duckdb": per_node_duck, "distinct": distinct, "point": point}))
    return 0


def limits(endpoint, prefix, rate):
    """Set `operator:*` to RATE per minute: push the next revision of the configuration
    repository with `global/limits.toml` replaced, the way `switchboard limits set` does."""
    s = session(endpoint)
    time.sleep(0.5)

    def states():
        out = {}
        for reply in s.get(f"{prefix}/config/state/*", timeout=2.0):
            if reply.ok is not None:
                st = json.loads(reply.ok.payload.to_bytes())
                out[st["node"]] = st
        return out

    def histories():
        out = {}
        for reply in s.get(f"{prefix}/limits/config/*", timeout=2.0):
            if reply.ok is None:
                continue
            node = str(reply.ok.key_expr).rsplit("/", 1)[-1]
            out[node] = json.loads(reply.ok.payload.to_bytes())
        return out

    before = states()
    if not before:
        print("no node answered", file=sys.stderr)
        return 1
    heads = {h["id"]: h for st in before.values() for h in st["heads"]}
    if len(heads) > 1:
        print("the repository has a conflict", file=sys.stderr)
        return 1
    files, parents, number = {}, [], 1
    if heads:
        head = next(iter(heads.values()))
        node = next(n for n, st in before.items() if any(r["id"] == head["id"] for r in st["revisions"]))
        reply = next(iter(s.get(f"{prefix}/config/object/{node}/{head['id']}", timeout=2.0)))
        doc = reply.ok.payload.to_bytes()
        assert hashlib.sha256(doc).hexdigest() == head["id"], "a revision hashes to its id"
        files, parents, number = json.loads(doc)["files"], [head["id"]], head["number"] + 1
    content = f'[[limit]]\nkey = "operator:*"\nrate = {rate}\nper = "minute"\n'.encode()
    digest = hashlib.sha256(content).hexdigest()
    files["global/limits.toml"] = {"sha256": digest, "size": len(content)}
    rev = {
        "version": 1,
        "number": number,
        "parents": parents,
        "author": "python",
        "at_ms": int(time.time() * 1000),
        "message": "set from python",
        "files": files,
    }
    pack = {"revision": rev, "contents": {digest: base64.b64encode(content).decode()}}
    s.put(f"{prefix}/config/push", json.dumps(pack).encode())
    deadline = time.time() + 10
    while time.time() < deadline:
        now = histories()
        if now and all(h["revisions"] and h["revisions"][-1]["revision"] == number
                       and h["revisions"][-1]["author"] == "python" for h in now.values()):
            break
        time.sleep(0.2)
    else:
        print("the revision was not applied everywhere", file=sys.stderr)
        return 1
    reports = []
    sub = s.declare_subscriber(f"{prefix}/counter/*", lambda sample: reports.append(json.loads(sample.payload.to_bytes())))
    time.sleep(1.0)
    sub.undeclare()
    s.close()
    if not reports or any(r.get("version") != 1 or not isinstance(r.get("demand"), dict) for r in reports):
        print("bad demand reports", reports[:3], file=sys.stderr)
        return 1
    print(json.dumps({"revision": number, "nodes": sorted(now), "report": reports[-1]}))
    return 0


def canonical(fmt, msg_id):
    """The canonical id of docs/protocol.md ("DLR lookups")."""
    msg_id = msg_id.strip()
    if fmt == "decimal":
        return str(int(msg_id, 10))
    if fmt == "hex":
        return str(int(msg_id[2:] if msg_id.lower().startswith("0x") else msg_id, 16))
    if fmt == "nocase":
        return msg_id.lower()
    return msg_id


def key_chunk(cid):
    safe = set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._~-")
    return "".join(chr(b) if b in safe else "%%%02X" % b for b in cid.encode())


def weight(node, key):
    """The rendezvous weight of a node for a record key (docs/protocol.md, "Copies")."""
    m = (1 << 64) - 1
    h = 0xcbf29ce484222325
    for b in node.encode() + b"\xff" + key:
        h = ((h ^ b) * 0x100000001b3) & m
    h ^= h >> 33
    h = (h * 0xff51afd7ed558ccd) & m
    h ^= h >> 33
    h = (h * 0xc4ceb9fe1a85ec53) & m
    return h ^ (h >> 33)


def first_holder(s, prefix, connector, cid):
    """Ask only the heaviest live node, which holds the record as owner or copy: (node, reply)."""
    nodes = []
    for r in s.liveliness().get(prefix + "/node/*", timeout=1.0):
        if r.ok is not None:
            nodes.append(str(r.ok.key_expr).rsplit("/", 1)[1])
    key = connector.encode() + b"\0" + cid.encode()
    first = max((weight(n, key), n) for n in nodes)[1]
    replies = [json.loads(r.ok.payload.to_bytes())
               for r in s.get(f"{prefix}/dlr/at/{first}/{connector}/{key_chunk(cid)}", timeout=2.0)
               if r.ok is not None]
    return {"node": first, "live": sorted(nodes), "reply": replies[0] if replies else None,
            "asked": ask_stream(s, prefix, first, connector, cid)}


def ask_stream(s, prefix, node, connector, cid):
    """The same lookups on the ask stream: two malformed asks (dropped), then ask 7 for the id
    and ask 8 for an id nobody holds; the answers by number, as they come within 2 s."""
    answers = s.declare_subscriber(f"{prefix}/dlr/answer/py1/*")
    time.sleep(0.3)
    ask = f"{prefix}/dlr/ask/{node}"
    s.put(ask, b"not json")
    s.put(ask, json.dumps({"version": 1, "reply_to": "a/b", "n": 6, "connector": connector, "id": cid}).encode())
    for n, asked in [(7, cid), (8, cid + "-nobody")]:
        s.put(ask, json.dumps({"version": 1, "reply_to": "py1", "n": n, "connector": connector, "id": asked}).encode())
    got = {}
    deadline = time.time() + 2.0
    while len(got) < 2 and time.time() < deadline:
        sample = answers.try_recv()
        if sample is None:
            time.sleep(0.01)
            continue
        a = json.loads(sample.payload.to_bytes())
        a["from"] = str(sample.key_expr).rsplit("/", 1)[1]
        got[str(a["n"])] = a
    answers.undeclare()
    return got


def dlr(endpoint, prefix, connector, fmt, msg_id, status=None):
    """One lookup query to every node; with STATUS, the query carries a final DLR report.
    Without, the heaviest live node is also asked alone (reported as "first"), and every node
    on `dlr/id` (the owner's reply reported as "by_id")."""
    import zenoh
    s = session(endpoint)
    time.sleep(0.5)
    key = f"{prefix}/dlr/at/*/{connector}/{key_chunk(canonical(fmt, msg_id))}"
    first = None if status else first_holder(s, prefix, connector, canonical(fmt, msg_id))
    payload = None
    if status:
        payload = json.dumps({"version": 1, "status": status, "final": True, "reported_at": int(time.time() * 1000),
                              "reported_by": "python"}).encode()
    replies = []
    for reply in s.get(key, target=zenoh.QueryTarget.ALL, consolidation=zenoh.ConsolidationMode.NONE,
                       payload=payload, timeout=2.0):
        if reply.ok is not None:
            r = json.loads(reply.ok.payload.to_bytes())
            r["on_key_of"] = str(reply.ok.key_expr).split("/")[-3]
            replies.append(r)
    by_id = None
    if not status:
        id_key = f"{prefix}/dlr/id/{connector}/{key_chunk(canonical(fmt, msg_id))}"
        for reply in s.get(id_key, target=zenoh.QueryTarget.ALL, consolidation=zenoh.ConsolidationMode.NONE,
                           timeout=2.0):
            if reply.ok is not None and str(reply.ok.key_expr) == id_key:
                r = json.loads(reply.ok.payload.to_bytes())
                if r.get("role") == "owner":
                    by_id = r
    s.close()
    owner = [r for r in replies if r.get("version") == 1 and r.get("role") == "owner"]
    if not owner:
        print("no owner reply", key, replies, file=sys.stderr)
        return 1
    print(json.dumps({"key": key, "owner": owner[0], "replies": len(replies), "first": first, "by_id": by_id}))
    return 0


def tables(dataset):
    """Per table: rows as pyarrow counts them, and DuckDB's rows, distinct rows and sums."""
    import glob
    import os
    import duckdb
    import pyarrow.dataset as ds
    out = {}
    con = duckdb.connect()
    for table in ["logs", "limits", "dlr", "metrics"]:
        path = os.path.join(dataset, table)
        if not glob.glob(path + "/**/*.parquet", recursive=True):
            continue
        files = path + "/**/*.parquet"
        entry = {"pyarrow_rows": ds.dataset(path, format="parquet", partitioning="hive").count_rows()}
        rows, sum_seq, distinct = con.execute(
            "SELECT count(*), sum(seq), count(DISTINCT (node, stream, seq)) FROM read_parquet(?, hive_partitioning = true)",
            [files]).fetchone()
        entry.update(rows=rows, sum_seq=int(sum_seq or 0), distinct_rows=distinct)
        if table == "metrics":
            v, c, h = con.execute(
                "SELECT sum(value), sum(count), count(histogram) FROM read_parquet(?, hive_partitioning = true)",
                [files]).fetchone()
            entry.update(sum_value=v, sum_count=int(c or 0), histograms=h)
        out[table] = entry
    print(json.dumps(out))
    return 0


def main(argv):
    cmd = argv[1]
    if cmd == "subscribe":
        return subscribe(argv[2], argv[3], argv[4], int(argv[5]), float(argv[6]))
    if cmd == "publish":
        return publish(argv[2], argv[3], argv[4], argv[5], int(argv[6]))
    if cmd == "read":
        return read(argv[2])
    if cmd == "limits":
        return limits(argv[2], argv[3], int(argv[4]))
    if cmd == "dlr":
        return dlr(*argv[2:])
    if cmd == "tables":
        return tables(argv[2])
    print("unknown command", cmd, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
