"""What a front end knows of the model when another process owns it (``ABN_MODEL_PROCESS=shared``).

A front end validates budgets and widths, decodes images to the model's input, counts metrics
per layer and answers ``GET /v1/model`` and the v2 metadata; none of that needs the weights.
The owner sends these facts, as JSON, first thing on each front end's connection: its model
card (so the card names the device the model really runs on, a GPU included), the cost table
and the manifest's accuracy tables. So a front end loads nothing (no weights, no trace of the
network, no CUDA) and cannot disagree with the owner about the model.

:class:`OwnerModel` has the attributes of :class:`~service.model.ServedModel` that the routes
and the metrics read, so the routes do not know which mode serves them.
"""

from __future__ import annotations

import json
from typing import Any

from abn.bitops import CostTable
from abn.preprocess import InputSpec
from service.accuracy import AccuracyTables
from service.model import CostFacts, ServedModel


def model_facts(model: ServedModel) -> bytes:
    """The owner's side: the facts of its loaded model, as the JSON a front end reads."""
    t = model.table
    return json.dumps(
        {
            "card": model.card(),
            "table": {
                "layer_names": list(t.layer_names),
                "layer_macs": list(t.layer_macs),
                "fixed_macs": t.fixed_macs,
                "bit_candidates": list(t.bit_candidates),
                "fixed_bits": t.fixed_bits,
                "layer_input_shapes": [list(s) for s in t.layer_input_shapes],
            },
            "accuracy": model.directory.manifest.get("accuracy"),
        }
    ).encode()


class OwnerModel(CostFacts):
    """The model another process serves, as the front end sees it: facts, no weights."""

    def __init__(self, facts: bytes) -> None:
        data = json.loads(facts)
        self._card: dict[str, Any] = data["card"]
        t = data["table"]
        self.table = CostTable(
            tuple(t["layer_names"]),
            tuple(t["layer_macs"]),
            t["fixed_macs"],
            tuple(t["bit_candidates"]),
            t["fixed_bits"],
            tuple(tuple(s) for s in t["layer_input_shapes"]),
        )
        self.accuracy = AccuracyTables(data["accuracy"])
        self.name: str = self._card["name"]
        self.version: str = self._card["version"]
        self.classes: list[str] = list(self._card["classes"])
        self.input_spec = InputSpec.from_dict(self._card["input"])
        self.device: str = self._card["device"]  # the owner's

    def card(self) -> dict[str, Any]:
        """``GET /v1/model``: the owner's card, as it sent it."""
        return self._card
