"""The naive peer: FastAPI with the model called in the route, one request at a time.

What a first deployment usually is: an ``async`` route that reads the body, decodes it and runs
the network on the event loop. No batching, no worker thread: each request holds the loop for
its whole forward pass, so at concurrency 1 it has no queueing at all (the latency to beat
there) and above it every request waits for all those ahead of it.

    python -m loadtest.peers.naive --model model_store/fmnist-abn --port 8000
"""

from __future__ import annotations

from typing import Any

import uvicorn
from fastapi import FastAPI, HTTPException, Request
from PIL import UnidentifiedImageError

from loadtest.peers.model import PinnedModel, load_or_exit, peer_arguments


def create_app(model: PinnedModel) -> FastAPI:
    app = FastAPI(title="naive peer")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/classify")
    async def classify(request: Request) -> dict[str, Any]:
        try:
            image = model.decode(await request.body())
        except (UnidentifiedImageError, OSError) as err:
            raise HTTPException(status_code=400, detail="not a decodable image") from err
        return model.classify_batch([image])[0]

    return app


def main() -> None:
    parser = peer_arguments(__doc__ or "")
    args = parser.parse_args()
    app = create_app(load_or_exit(parser, args))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
