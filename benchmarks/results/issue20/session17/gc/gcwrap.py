"""Run benchmarks.worker_cost with GC timing per generation (and optional thresholds via GC_THRESH=a,b,c)."""
import atexit
import gc
import os
import runpy
import sys
import time

t = {0: [0, 0.0], 1: [0, 0.0], 2: [0, 0.0]}
start = [0.0]
def cb(phase, info):
    if phase == "start":
        start[0] = time.process_time()
    else:
        g = info["generation"]
        t[g][0] += 1
        t[g][1] += time.process_time() - start[0]
gc.callbacks.append(cb)
if os.environ.get("GC_THRESH"):
    gc.set_threshold(*map(int, os.environ["GC_THRESH"].split(",")))
atexit.register(lambda: print("GC", {g: (n, round(s, 3)) for g, (n, s) in t.items()}, "objects",
                              len(gc.get_objects()), file=sys.stderr))
sys.argv = ["worker_cost", *sys.argv[1:]]
runpy.run_module("benchmarks.worker_cost", run_name="__main__")
