"""Settings refuse unknown scheduler and placement names, naming the field and the valid ones."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tessera.platform.settings import Settings


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("placement", "tetris", "unknown placement policy 'tetris'; valid: one of tessera"),
        ("scheduler", "magic", "unknown scheduler 'magic'; valid:"),
    ],
)
def test_unknown_names_are_refused(field: str, value: str, says: str) -> None:
    with pytest.raises(ValidationError) as info:
        Settings.model_validate({field: value})
    error = info.value.errors()[0]
    assert error["loc"] == (field,) and says in error["msg"]


def test_placement_defaults_to_tessera_and_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().placement == "tessera"
    monkeypatch.setenv("TESSERA_PLACEMENT", "packing")
    assert Settings().placement == "packing"
