"""Diagnostic for bench/tickets.py --gc-probe: counts the cyclic garbage collector's runs and time per generation in
any Python process started with this directory on PYTHONPATH. SIGUSR1 writes the totals so far to
$SPACEGRID_BENCH_GC_DIR/gc-<pid>.json. Not used by spacegrid itself."""

import gc
import json
import os
import signal
import time

_totals = {0: [0, 0.0, 0], 1: [0, 0.0, 0], 2: [0, 0.0, 0]}  # runs, seconds, objects collected
_started = [0.0]


def _on_gc(phase, info):
    if phase == "start":
        _started[0] = time.perf_counter()
    else:
        total = _totals[info["generation"]]
        total[0] += 1
        total[1] += time.perf_counter() - _started[0]
        total[2] += info.get("collected", 0)


def _dump(signum, frame):
    directory = os.environ.get("SPACEGRID_BENCH_GC_DIR")
    if not directory:
        return
    record = {"pid": os.getpid(), "objects_tracked": len(gc.get_objects()),
              "generations": {str(g): {"runs": t[0], "seconds": t[1], "collected": t[2]} for g, t in _totals.items()},
              "thresholds": gc.get_threshold()}
    path = os.path.join(directory, f"gc-{os.getpid()}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(record, f)
    os.replace(path + ".tmp", path)


if os.environ.get("SPACEGRID_BENCH_GC_DIR"):
    gc.callbacks.append(_on_gc)
    signal.signal(signal.SIGUSR1, _dump)
