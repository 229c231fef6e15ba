"""The entries of a YAML `space:` section: one distribution per dotted key, with Optuna's own rules checked
before anything runs. A leaf module (pydantic only); config.py validates them with the rest of the file."""
from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _RangeParam(_Entry):
    """A numeric range; Optuna's own rules, checked before anything runs."""

    @model_validator(mode="after")
    def _range(self):
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) > high ({self.high}): swap them")
        if self.log and self.low <= 0:
            raise ValueError(f"log: true needs low > 0 (got {self.low})")
        if self.log and self.step not in (None, 1):
            raise ValueError("step and log: true cannot be combined")
        return self


class FloatParam(_RangeParam):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: Optional[float] = Field(None, gt=0)
    when: dict[str, Any] = {}  # sample only when these parameters have these values


class IntParam(_RangeParam):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = Field(1, ge=1)
    when: dict[str, Any] = {}


class CategoricalParam(_Entry):
    type: Literal["categorical"]
    choices: list[Union[bool, int, float, str, None]] = Field(min_length=1)
    when: dict[str, Any] = {}


SpaceParam = Annotated[Union[FloatParam, IntParam, CategoricalParam], Field(discriminator="type")]
