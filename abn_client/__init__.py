"""A Python client for abn-serve: sync (:class:`Client`) and async (:class:`AsyncClient`).

::

    from abn_client import Client

    with Client("http://127.0.0.1:8000") as client:
        result = client.classify("shoe.png", budget=25e6)
        print(result.class_name, result.bitops, result.bit_widths)
        many = client.classify_many(["a.png", "b.png"], bit_widths=4)

Budgets and pinned widths are arguments (the client writes the ``X-BitOps-Budget`` and
``X-Bit-Widths`` headers), answers are typed (:class:`ClassifyResult`), a refusal raises
:class:`RequestFailed` with the server's status, ``error_type`` and message, and a 429 or 503
is retried after the server's ``Retry-After`` (:class:`RetryPolicy`). It depends on httpx
alone, so a user needs neither the model nor torch.
"""

from abn_client.aio import AsyncClient
from abn_client.errors import RequestFailed
from abn_client.results import ClassifyResult, Feedback, TopClass
from abn_client.retry import RetryPolicy
from abn_client.sync import Client

__all__ = [
    "AsyncClient",
    "ClassifyResult",
    "Client",
    "Feedback",
    "RequestFailed",
    "RetryPolicy",
    "TopClass",
]
