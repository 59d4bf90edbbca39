"""The judge's series for rules and status, from recent verdicts kept in memory (bounded) and
restored from the judge store at start.

Runs are minutes apart, so a series covers at least one schedule period whatever the rule's
window: a 5-minute rule over a 15-minute schedule sees the last run, not no-data two times in
three.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from lookout.series import SeriesPoint


class CriterionVerdict(Protocol):
    """A verdict, fresh from the judge or read back from the store."""

    @property
    def criterion(self) -> str: ...
    @property
    def passed(self) -> bool: ...
    @property
    def score(self) -> float: ...


@dataclass(frozen=True, slots=True)
class JudgedRecord:
    at: float
    app: str
    passed: bool  # every criterion passed
    scores: tuple[tuple[str, float], ...]  # (criterion, score 0-1, 1 best)
    record_id: str = ""

    @classmethod
    def of(
        cls, at: float, app: str, verdicts: Sequence[CriterionVerdict], record_id: str = ""
    ) -> JudgedRecord:
        return cls(
            at,
            app,
            all(v.passed for v in verdicts),
            tuple((v.criterion, v.score) for v in verdicts),
            record_id,
        )


@dataclass(frozen=True, slots=True)
class Agreement:
    at: float
    value: float  # share of anchor verdicts equal to the expected ones
    count: int


class JudgeLedger:
    def __init__(self, *, max_age_s: float, min_window_s: float, max_records: int = 100_000):
        self._max_age_s = max_age_s
        self._min_window_s = min_window_s
        self._records: deque[JudgedRecord] = deque(maxlen=max_records)
        self._agreements: deque[Agreement] = deque(maxlen=10_000)
        # (app, record id) -> were its users content (no negative feedback)? None: no feedback.
        self.user_verdict: Callable[[str, str], bool | None] | None = None

    def add(self, record: JudgedRecord) -> None:
        self._records.append(record)

    def add_agreement(self, agreement: Agreement) -> None:
        self._agreements.append(agreement)

    def prune(self, now: float) -> None:
        cutoff = now - self._max_age_s
        while self._records and self._records[0].at < cutoff:
            self._records.popleft()
        while self._agreements and self._agreements[0].at < cutoff:
            self._agreements.popleft()

    def series(self, window_s: float, now: float) -> list[SeriesPoint]:
        """judge_pass_rate{app}, judge_score{app,criterion}, judge_agreement and
        judge_feedback_agreement{app} over the window (at least one schedule period)."""
        since = now - max(window_s, self._min_window_s)
        passed: dict[str, list[int]] = {}
        scores: dict[tuple[str, str], list[float]] = {}
        for r in self._records:
            if not since < r.at <= now:
                continue
            tally = passed.setdefault(r.app, [0, 0])
            tally[0] += r.passed
            tally[1] += 1
            for criterion, score in r.scores:
                scores.setdefault((r.app, criterion), []).append(score)
        out = [
            SeriesPoint("judge_pass_rate", (("app", app),), ok / n, n)
            for app, (ok, n) in sorted(passed.items())
        ]
        out += [
            SeriesPoint("judge_score", (("app", app), ("criterion", c)), sum(v) / len(v), len(v))
            for (app, c), v in sorted(scores.items())
        ]
        recent = [a for a in self._agreements if since < a.at <= now]
        if recent:
            last = recent[-1]
            out.append(SeriesPoint("judge_agreement", (), last.value, last.count))
        return out + self._feedback_agreement(since, now)

    def _feedback_agreement(self, since: float, now: float) -> list[SeriesPoint]:
        """judge_feedback_agreement{app}: of the records judged in the window that users gave
        feedback on, the share where the judge's verdict (every criterion passed) matches the
        users' (no negative feedback). Feedback given after the verdict counts as it comes."""
        if self.user_verdict is None:
            return []
        tallies: dict[str, list[int]] = {}
        for r in self._records:
            if not since < r.at <= now or not r.record_id:
                continue
            users_content = self.user_verdict(r.app, r.record_id)
            if users_content is not None:
                tally = tallies.setdefault(r.app, [0, 0])
                tally[0] += users_content == r.passed
                tally[1] += 1
        return [
            SeriesPoint("judge_feedback_agreement", (("app", app),), agreed / n, n)
            for app, (agreed, n) in sorted(tallies.items())
        ]
