"""Peer servers that ``make bench`` measures the service against, same model, same images.

Each is the idiomatic way to serve the shipped supernet with its framework, pinned to one
uniform width (4 bits by default) for every request, answering ``POST /classify`` with a PNG and
``GET /health`` once the model is loaded:

* :mod:`loadtest.peers.litserve_api` - LitServe, with its own dynamic batching (a separate
  inference worker process fed over queues);
* :mod:`loadtest.peers.naive` - FastAPI with the model called in the route: one request at a
  time, no batching, what most first deployments look like;
* :mod:`loadtest.peers.lean` - the floor: a plain ASGI callable on uvicorn, one process per core,
  each with its own model and a batcher that never waits; what the machine can do at all.

They import :mod:`abn` (the model library) and never :mod:`service`, so what they share with the
service is the model and its decoding, not the serving code being measured. The bench runs them
from their own virtual environment (:mod:`loadtest.peers.venv`).
"""
