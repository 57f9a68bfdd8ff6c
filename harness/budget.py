"""A job's spending cap (`run.budget_usd`): a call starts only if its worst case still fits.

API backends ask `admit` before every call the response cache cannot serve, with the call's worst-case cost
(estimated input tokens plus max_new_tokens of output, at the configured prices), and `settle` it afterwards
with what it really cost. Once one call is refused, every later one is too (sticky), so nothing is asked
after a refusal: the queries answered before it are exactly those an unbudgeted run would have answered
first, and a later run with a larger budget continues where this one stopped.
"""

from __future__ import annotations


class BudgetExhausted(Exception):
    """The job's budget cannot pay for the next call. The stream stops quietly: its unasked queries get
    no record (an error record would be a wrong answer; no record means "ask me next time")."""


class Budget:
    """Dollars spent by this job folder, against an optional limit; one per job, shared by its backends."""

    def __init__(self, limit_usd: float | None, spent_before_usd: float = 0.0) -> None:
        self.limit_usd = limit_usd
        self.spent_before_usd = spent_before_usd  # by earlier runs into the same job folder
        self.spent_usd = 0.0  # by this run: calls that reached a provider (cache hits are free)
        self.reached = False
        self._reserved = 0.0  # worst cases of the calls in flight

    @property
    def total_usd(self) -> float:
        return self.spent_before_usd + self.spent_usd

    def admit(self, worst_usd: float) -> None:
        """Reserve a call's worst case, or raise BudgetExhausted (from now on for every call)."""
        if self.limit_usd is None:
            return
        if self.reached or self.total_usd + self._reserved + worst_usd > self.limit_usd + 1e-12:
            self.reached = True
            raise BudgetExhausted(
                f"run.budget_usd={self.limit_usd:g} reached: ${self.total_usd:.4f} spent, "
                f"${self._reserved:.4f} in flight, the next call may cost up to ${worst_usd:.4f}"
            )
        self._reserved += worst_usd

    def settle(self, worst_usd: float, actual_usd: float) -> None:
        """A call admitted with `worst_usd` ended and cost `actual_usd` (0 when it failed)."""
        if self.limit_usd is not None:
            self._reserved = max(0.0, self._reserved - worst_usd)
        self.spent_usd += actual_usd
