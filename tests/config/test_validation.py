"""The one-line messages shared by the run config and the study file: a rule names its key relative to where its
validator runs, and the message puts the full dotted key in front."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from lightning_ehf.validation import config_error, describe_error, join_key, rule_message


class Inner(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    size: int = 1
    planes: list[list[int]] = []

    @field_validator("size")
    @classmethod
    def _size(cls, size: int) -> int:
        if size == 7:
            raise config_error("", "seven is not allowed")
        return size

    @model_validator(mode="after")
    def _planes(self) -> Inner:
        for i, plane in enumerate(self.planes):
            if len(set(plane)) != len(plane):
                raise config_error(f"planes[{i}]", f"repeats a coordinate: {plane}")
        return self


class Outer(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    inner: Inner = Inner()
    sections: list[Inner] = []

    @model_validator(mode="after")
    def _whole(self) -> Outer:
        if self.inner.size == 3 and not self.sections:
            raise config_error("inner.size", "3 needs sections")
        return self


def _message(raw: dict, at: str = "") -> str:
    with pytest.raises(ValidationError) as err:
        Outer.model_validate(raw)
    return describe_error(err.value, Outer, at=at)


@pytest.mark.parametrize(
    ("raw", "at", "expected"),
    [
        ({"inner": {"size": 7}}, "", "inner.size: seven is not allowed"),
        ({"inner": {"planes": [[0, 1], [2, 2]]}}, "", "inner.planes[1]: repeats a coordinate: [2, 2]"),
        ({"sections": [{}, {"size": 7}]}, "", "sections[1].size: seven is not allowed"),
        ({"inner": {"size": 3}}, "", "inner.size: 3 needs sections"),
        ({"inner": {"size": 7}}, "study.part", "study.part.inner.size: seven is not allowed"),
        ({"inner": {"sise": 2}}, "top", "unknown config key 'top.inner.sise'; did you mean 'top.inner.size'?"),
        ({"inner": {"size": "2"}}, "", "inner.size: expected an integer, got string '2'; numbers must not be quoted"),
    ],
)
def test_a_rule_is_said_at_its_full_key(raw, at, expected):
    assert _message(raw, at) == expected


def test_a_rule_raised_outside_validation_gets_the_section_key():
    assert rule_message(config_error("coords", "out of range"), "symmetry") == "symmetry.coords: out of range"
    assert rule_message(config_error("", "a study file is a mapping")) == "a study file is a mapping"


@pytest.mark.parametrize(
    ("path", "key", "joined"), [("", "a", "a"), ("a", "", "a"), ("a.b", "c", "a.b.c"), ("a", "[0]", "a[0]")]
)
def test_join_key(path, key, joined):
    assert join_key(path, key) == joined
