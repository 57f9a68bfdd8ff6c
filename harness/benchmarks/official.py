"""An official score table: per task, per category and overall, as a benchmark's official script
prints it. Scorers of public benchmarks return one; `python -m analysis score` prints it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class OfficialTable:
    """Accuracies in % (as the official scripts print them), with the counts they were computed over."""

    benchmark: str
    tasks: dict[str, float]  # task code -> accuracy %
    categories: dict[str, float]  # category name -> its official aggregate %
    overall: float
    counts: dict[str, int] = field(default_factory=dict)  # task code -> items (or probes) scored
    notes: tuple[str, ...] = ()  # what the official rules did that a user should know (e.g. excluded items)

    def flat(self) -> dict[str, float]:
        """One JSON object keyed by task code, category name and `overall`."""
        return {**self.tasks, **self.categories, "overall": self.overall}

    def lines(self) -> list[str]:
        rows = [f"| {code} | {value:.2f} | {self.counts.get(code, '')} |" for code, value in self.tasks.items()]
        rows += [f"| **{name}** | {value:.2f} | |" for name, value in self.categories.items()]
        rows.append(f"| **overall** | {self.overall:.2f} | |")
        return [f"{self.benchmark}: official scoring", "", "| task | accuracy % | n |", "| --- | --- | --- |", *rows]
