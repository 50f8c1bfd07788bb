"""The LitServe peer: a ``LitAPI`` with LitServe's own dynamic batching (32 requests or 5 ms).

LitServe's design: the HTTP server (FastAPI on uvicorn) puts each request on a queue to a
separate inference worker process, which collects up to ``max_batch_size`` requests for at most
``batch_timeout`` seconds, runs ``predict`` on the batch and sends the answers back over
another queue. Everything below is LitServe's documented way of doing it, defaults elsewhere.

LitServe hands ``decode_request`` the parsed JSON body (or a form, which it cannot pass on to
its worker process: an upload does not pickle); it has no raw-body mode, so this peer takes
``{"image": "<base64 PNG>"}``, the way LitServe's image examples do (the bench sends that).

    python -m loadtest.peers.litserve_api --model model_store/fmnist-abn --port 8000
"""

# No ``from __future__ import annotations`` here: LitServe compares the annotation of
# ``decode_request`` with the class ``Request`` itself, and a string would not match.

import base64
from typing import Any

import litserve as ls
import torch
from fastapi import Request

from loadtest.peers.model import PinnedModel, checked_directory, peer_arguments

MAX_BATCH_SIZE = 32
BATCH_TIMEOUT_SECONDS = 0.005
JSON_FIELD = "image"


class ClassifierAPI(ls.LitAPI):
    """The pinned model behind LitServe; ``setup`` runs in the inference worker process."""

    def __init__(self, model_args: Any) -> None:
        super().__init__(
            max_batch_size=MAX_BATCH_SIZE,
            batch_timeout=BATCH_TIMEOUT_SECONDS,
            api_path="/classify",
        )
        self.model_args = model_args

    def setup(self, device: str) -> None:
        a = self.model_args
        self.model = PinnedModel(a.directory, a.bits, a.torch_threads)

    def decode_request(self, request: Request, **kwargs: Any) -> torch.Tensor:
        # LitServe reads the annotation: ``Request`` makes it parse the JSON body in the HTTP
        # process; what arrives here, in the worker, is that JSON, not the Request.
        return self.model.decode(base64.b64decode(request[JSON_FIELD]))

    def batch(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        return inputs  # PinnedModel stacks them itself

    def predict(self, x: list[torch.Tensor], **kwargs: Any) -> list[dict[str, Any]]:
        return self.model.classify_batch(x)

    def unbatch(self, output: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return output

    def encode_response(self, output: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        return output


def main() -> None:
    parser = peer_arguments(__doc__ or "")
    args = parser.parse_args()
    args.directory = checked_directory(parser, args)
    server = ls.LitServer(ClassifierAPI(args), accelerator="cpu", healthcheck_path="/health")
    server.run(host=args.host, port=args.port, generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main()
