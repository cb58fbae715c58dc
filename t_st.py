exec(open('/tmp/bbF/q.py').read())
for x in get(f"{P}/status/*/*", show=False):
    d=json.loads(x[3]); print(x[1], "live", d["live"], "departed", d["departed"])
    if "collector" in d: print(json.dumps(d["collector"], indent=None))
s.close()
