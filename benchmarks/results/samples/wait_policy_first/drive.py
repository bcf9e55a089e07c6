# usage: drive.py ROUNDS LOAD(0/1) B N MODE  -- interleaves env variants x threads
import sys, os, subprocess, json, statistics, time
R, LOAD, B, N, MODE = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
variants = json.loads(sys.argv[6]) if len(sys.argv) > 6 else {
    "default": {}, "passive": {"OMP_WAIT_POLICY": "passive"},
    "spin1k": {"GOMP_SPINCOUNT": "1000"}, "spin10k": {"GOMP_SPINCOUNT": "10000"}}
threads = [1, 2]
py = sys.executable
HERE = os.path.dirname(os.path.abspath(__file__))
res = {}
busy = None
if LOAD:
    busy = subprocess.Popen([py, os.path.join(HERE, "busy.py"), "240"])
try:
    for r in range(R):
        keys = [(v, t) for v in variants for t in threads]
        keys = keys[r % len(keys):] + keys[:r % len(keys)]
        for v, t in keys:
            env = {k: x for k, x in os.environ.items() if not k.startswith(("OMP_", "GOMP_"))}
            env.update(variants[v]); env["OPENBLAS_NUM_THREADS"] = "1"
            out = subprocess.run([py, os.path.join(HERE, "train1.py"), str(t), B, N, MODE, "3"],
                                 env=env, capture_output=True, text=True, timeout=200)
            try:
                d = json.loads(out.stdout.strip().splitlines()[-1])
            except Exception:
                print(out.stdout, out.stderr); raise
            res.setdefault(f"{v} T{t}", []).extend(d["epochs"][1:])
            print(v, t, ["%.3f" % e for e in d["epochs"]], d["dev"], d["path"], flush=True)
finally:
    if busy: busy.kill(); busy.wait()
for k, v in res.items():
    print("%-14s median %.3f  min %.3f  n=%d" % (k, statistics.median(v), min(v), len(v)))
