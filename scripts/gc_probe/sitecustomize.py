"""A probe of Python's cyclic garbage collector, loaded into every interpreter started with
this directory on ``PYTHONPATH`` while ``GC_PROBE_DIR`` names a directory (scripts/flood_gc.py
does both for the server it starts; nothing else uses it).

Each process writes ``<GC_PROBE_DIR>/gc-<pid>.json`` once a second: per generation, the CPU
time of each collection so far (this thread's, so time the process spent descheduled does not
count), the last 100,000 of them. A collection holds the GIL and, on a worker, the event loop:
its length is a pause of every request on that worker.
"""

from __future__ import annotations

import gc
import json
import os
import threading
import time

_DIR = os.environ.get("GC_PROBE_DIR")


def _install(directory: str) -> None:
    stats: dict[int, list[float]] = {g: [] for g in range(3)}
    started = [0.0]

    def on_collection(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.thread_time()
            return
        took = stats[info["generation"]]
        took.append(round((time.thread_time() - started[0]) * 1000.0, 3))
        del took[:-100_000]

    def write_every_second() -> None:
        path = os.path.join(directory, f"gc-{os.getpid()}.json")
        while True:
            time.sleep(1.0)
            with open(path + ".tmp", "w") as out:
                json.dump(stats, out)
            os.replace(path + ".tmp", path)

    gc.callbacks.append(on_collection)
    threading.Thread(target=write_every_second, name="gc-probe", daemon=True).start()


if _DIR:
    _install(_DIR)
