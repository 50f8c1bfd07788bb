"""Holds the model of a real test server on demand: Python runs this file at start-up in every
process whose ``PYTHONPATH`` starts here (:class:`tests.service.helpers.ServerProcess` with
``model_gate=``), workers of the supervisor included.

Since a request that finds the model idle runs at once (service/engine.py), a test that needs
requests *queued* (drain on SIGTERM, a client vanishing while queued, a deadline passing in
the queue) holds the model instead: while the file named by ``ABNTEST_MODEL_GATE`` exists,
every batch waits in the model thread before it runs, at most ``HOLD_LIMIT`` seconds, so a
test that forgets to open the gate fails instead of hanging (such a server runs its batches
in a model thread, ``ABN_BATCH_EXECUTION=thread``, so that its event loop still answers).
Absent, nothing is changed.
"""

from __future__ import annotations

import os
import time

GATE = os.environ.get("ABNTEST_MODEL_GATE")
HOLD_LIMIT = 60.0

if GATE:
    from service.model import ServedModel

    _infer = ServedModel.infer

    def _gated_infer(self, images, budgets, pinned):  # type: ignore[no-untyped-def]
        end = time.monotonic() + HOLD_LIMIT
        while os.path.exists(GATE) and time.monotonic() < end:
            time.sleep(0.005)
        return _infer(self, images, budgets, pinned)

    ServedModel.infer = _gated_infer  # type: ignore[method-assign]
