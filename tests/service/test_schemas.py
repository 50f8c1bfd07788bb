"""service.schemas: what the OpenAPI document tells clients agrees with what the service sends."""

from __future__ import annotations

import re
from pathlib import Path

from service.schemas import ErrorBody

API_DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def documented_error_types() -> set[str]:
    """Every ``error_type`` of docs/api.md's error table (``| 422 | `invalid_budget` | ...``)."""
    section = API_DOC.read_text().split("\n## Errors\n", 1)[1].split("\n## ", 1)[0]
    types: set[str] = set()
    for line in section.splitlines():
        cells = line.strip("|").split("|")
        if len(cells) >= 2 and cells[0].strip().isdigit():
            types.update(re.findall(r"`([a-z_]+)`", cells[1]))
    return types


def test_the_error_type_the_description_gives_as_an_example_is_one_the_service_sends() -> None:
    description = ErrorBody.model_fields["error_type"].description or ""
    examples = re.findall(r"e\.g\. ([a-z_]+)", description)
    known = documented_error_types()
    assert examples and set(examples) <= known, (examples, sorted(known))
