"""Typed answers of the service, built from its JSON (docs/api.md, POST /classify)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True, slots=True)
class TopClass:
    label: int
    class_name: str
    probability: float


@dataclass(frozen=True, slots=True)
class ClassifyResult:
    """One image's answer. ``id`` is what :meth:`Client.feedback` takes."""

    id: str
    model_name: str
    model_version: str
    label: int
    class_name: str
    confidence: float
    top_k: list[TopClass]
    bit_widths: list[int]  # one per switchable layer: the configuration that answered
    first_pass_bit_widths: list[int] | None  # when the policy re-ran later layers
    bitops: float  # what this image cost, <= budget
    budget: float  # the budget that applied
    policy: Literal["adaptive", "pinned"]
    latency_ms: float  # in the server

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> ClassifyResult:
        return cls(
            id=str(body["id"]),
            model_name=str(body["model"]["name"]),
            model_version=str(body["model"]["version"]),
            label=int(body["label"]),
            class_name=str(body["class_name"]),
            confidence=float(body["confidence"]),
            top_k=[
                TopClass(int(t["label"]), str(t["class_name"]), float(t["probability"]))
                for t in body["top_k"]
            ],
            bit_widths=[int(b) for b in body["bit_widths"]],
            first_pass_bit_widths=(
                None
                if body.get("first_pass_bit_widths") is None
                else [int(b) for b in body["first_pass_bit_widths"]]
            ),
            bitops=float(body["bitops"]),
            budget=float(body["budget"]),
            policy=body["policy"],
            latency_ms=float(body["latency_ms"]),
        )


def results_from_json(body: dict[str, Any]) -> list[ClassifyResult]:
    """The answers of a request of one image or several (``{"results": [...]}``), in order."""
    if "results" in body:
        return [ClassifyResult.from_json(item) for item in body["results"]]
    return [ClassifyResult.from_json(body)]


@dataclass(frozen=True, slots=True)
class Feedback:
    """``POST /feedback``'s answer."""

    id: str
    label: int
    predicted_label: int
    outcome: Literal["correct", "incorrect"]

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Feedback:
        return cls(
            str(body["id"]), int(body["label"]), int(body["predicted_label"]), body["outcome"]
        )
