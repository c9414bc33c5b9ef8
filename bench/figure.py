"""A benchmark figure: a value beside a reference measured in the same run."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Figure:
    name: str
    value: float
    unit: str
    reference_name: str
    reference: float
    ratio: float
    goal: str

    def row(self) -> str:
        return (
            f"| {self.name} | {self.value:,.1f} {self.unit} | {self.reference_name}: "
            f"{self.reference:,.1f} {self.unit} | {self.ratio:.2f} | {self.goal} |"
        )
