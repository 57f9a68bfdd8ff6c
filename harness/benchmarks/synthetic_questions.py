"""Questions of the synthetic benchmark, derived from a video's tracks so every answer is certain.

A question is only asked where it is unambiguous: what it asks about has not changed for
`STABLE_S` before the query time, a "detail seen once" really was seen once, options that must be
told apart by time are `FIRST_GAP_S` apart. The grammar is fixed (the templates below); the
reference backend parses it. Each item is an annotation dict (the all.json form, answer included);
`evidence_s` is a flat list of (start, end) pairs: when the evidence is on screen.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from harness.benchmarks.synthetic_video import COLOURS, SHAPES, Track

REALTIME_COLOUR = "What colour is the {shape} on screen now?"
REALTIME_SHAPE = "What shape is the {colour} object on screen now?"
REALTIME_COUNT = "How many coloured objects are on screen now?"
CLUE_SHAPE = "What shape was the {colour} object that appeared earlier in the video?"
REASONING_COLOUR_COUNT = "How many {colour} objects have appeared so far?"
REASONING_SHAPE_COUNT = "How many coloured {shape}s have appeared so far?"
REASONING_FIRST = "Which of these appeared first?"
SEQUENTIAL_FOLLOW_UP = "Is an object of the colour you named in your previous answer on screen now?"
PROACTIVE = "Tell me when a {colour} object appears, and name its shape."
PROACTIVE_TRIGGER = "Is a {colour} object on screen now? Answer yes or no."

FIRST_QUERY_S = 4.0  # no question before this
TIME_STEP_S = 0.5  # query times lie on this grid
STABLE_S = 1.25  # what a question asks about is unchanged this long before it is asked
CLUE_GAP_S = 15.0  # a clue object left the screen at least this long before the question
FIRST_GAP_S = 2.0  # "appeared first" options appeared at least this far apart
PROACTIVE_WINDOW_S = 3.0  # a proactive response counts from the appearance until this much later
PROACTIVE_LEAD_S = 2.0  # the awaited object appears at least this long after the question
MIN_QUERY_GAP_S = 1.0  # two questions of a sample are at least this far apart
FOLLOW_UP_DELAYS_S = (3.0, 4.0, 5.0, 6.0)
PLAN = (  # (task, template ids to use, in order); a template without a candidate is skipped
    ("sequential", ("pair",)),
    ("proactive", ("proactive", "proactive")),
    ("clue", ("clue", "clue")),
    ("reasoning", ("colour_count", "shape_count", "first")),
    ("realtime", ("colour", "shape", "count")),
)


def make_queries(rng: np.random.Generator, tracks: list[Track], duration_s: float, fps: float) -> list[dict[str, Any]]:
    """Questions for one video, sorted by time, with `key`/`follows_key` linking a sequential pair."""
    scene = _Scene(tracks, duration_s, fps)
    times = np.arange(FIRST_QUERY_S, duration_s - 1.0 + 1e-9, TIME_STEP_S)
    chosen: list[dict[str, Any]] = []
    for task, templates in PLAN:
        for template in templates:
            free = [t for t in times if all(abs(t - q["time_s"]) >= MIN_QUERY_GAP_S for q in chosen)]
            candidates = [c for t in free for c in scene.candidates(template, float(t), rng)]
            candidates = [c for c in candidates if _fits(c, chosen)]
            if candidates:
                picked = candidates[int(rng.integers(len(candidates)))]
                for item in picked:
                    item["task"] = task
                chosen.extend(picked)
    chosen.sort(key=lambda q: q["time_s"])
    return chosen


class _Scene:
    """Which track is on screen in which frame, and the candidate questions at a time."""

    def __init__(self, tracks: list[Track], duration_s: float, fps: float) -> None:
        self.tracks, self.duration_s, self.fps = tracks, duration_s, fps
        self.n_frames = round(duration_s * fps)
        self.visible = np.zeros((len(tracks), self.n_frames), bool)
        for i, track in enumerate(tracks):
            self.visible[i, track.frames(fps).start : track.frames(fps).stop] = True
        self.coloured = [i for i, tr in enumerate(tracks) if not tr.is_distractor]
        self._steady_memo: dict[tuple[tuple[int, ...], float], list[int] | None] = {}

    def candidates(self, template: str, t: float, rng: np.random.Generator) -> list[list[dict[str, Any]]]:
        """Each candidate is a list of query items (two for a sequential pair)."""
        maker = getattr(self, f"_{template}")
        return [c for c in maker(t, rng) if c]

    # ---- realtime

    def _colour(self, t: float, rng: np.random.Generator) -> list[list[dict[str, Any]]]:
        out = []
        for shape in SHAPES:
            rows = [i for i, tr in enumerate(self.tracks) if tr.shape == shape]
            now = self._steady(rows, t)
            if now is None or len(now) != 1 or self.tracks[now[0]].is_distractor:
                continue
            colour = self.tracks[now[0]].colour
            others = [c for c in COLOURS if c != colour]
            options = [colour] + [others[i] for i in rng.permutation(len(others))[:3]]
            item = _mcq(t, REALTIME_COLOUR.format(shape=shape), options, colour, rng)
            item["evidence_s"] = [self._since(rows, t), t]
            out.append([item])
        return out

    def _shape(self, t: float, rng: np.random.Generator) -> list[list[dict[str, Any]]]:
        out = []
        for colour in COLOURS:
            rows = [i for i, tr in enumerate(self.tracks) if tr.colour == colour]
            now = self._steady(rows, t)
            if now is None or len(now) != 1:
                continue
            item = _mcq(t, REALTIME_SHAPE.format(colour=colour), list(SHAPES), self.tracks[now[0]].shape, rng)
            item["evidence_s"] = [self._since(rows, t), t]
            out.append([item])
        return out

    def _count(self, t: float, rng: np.random.Generator) -> list[list[dict[str, Any]]]:
        now = self._steady(self.coloured, t)
        if now is None:
            return []
        item = _count_mcq(t, REALTIME_COUNT, len(now), rng)
        item["evidence_s"] = [self._since(self.coloured, t), t]
        return [[item]]

    # ---- clue, reasoning

    def _clue(self, t: float, rng: np.random.Generator) -> list[list[dict[str, Any]]]:
        out = []
        for colour in COLOURS:
            seen = [tr for tr in self.tracks if tr.colour == colour and tr.appear_s <= t]
            if len(seen) == 1 and seen[0].disappear_s <= t - CLUE_GAP_S:
                item = _mcq(t, CLUE_SHAPE.format(colour=colour), list(SHAPES), seen[0].shape, rng)
                item["evidence_s"] = [seen[0].appear_s, seen[0].disappear_s]
                out.append([item])
        return out

    def _colour_count(self, t: float, rng: np.random.Generator) -> list[list[dict[str, Any]]]:
        return [
            self._appeared_count(t, REASONING_COLOUR_COUNT.format(colour=c), lambda tr, c=c: tr.colour == c, rng)
            for c in COLOURS
        ]

    def _shape_count(self, t: float, rng: np.random.Generator) -> list[list[dict[str, Any]]]:
        return [
            self._appeared_count(
                t, REASONING_SHAPE_COUNT.format(shape=s), lambda tr, s=s: tr.shape == s and not tr.is_distractor, rng
            )
            for s in SHAPES
        ]

    def _first(self, t: float, rng: np.random.Generator) -> list[list[dict[str, Any]]]:
        settled = [self.tracks[i] for i in self.coloured if self.tracks[i].appear_s <= t - STABLE_S]
        picked: list[Track] = []
        for k in rng.permutation(len(settled)):
            if all(abs(settled[k].appear_s - p.appear_s) >= FIRST_GAP_S for p in picked):
                picked.append(settled[k])
        if len(picked) < 4:
            return []
        picked = picked[:4]
        first = min(picked, key=lambda tr: tr.appear_s)
        item = _mcq(t, REASONING_FIRST, [_name(tr) for tr in picked], _name(first), rng)
        item["evidence_s"] = [x for tr in picked for x in (tr.appear_s, min(tr.disappear_s, t))]
        return [[item]]

    def _appeared_count(self, t: float, text: str, match: Any, rng: np.random.Generator) -> list[dict[str, Any]]:
        matching = [tr for tr in self.tracks if match(tr) and tr.appear_s <= t]
        if not matching or any(tr.appear_s > t - STABLE_S for tr in matching):
            return []
        item = _count_mcq(t, text, len(matching), rng)
        item["evidence_s"] = [x for tr in matching for x in (tr.appear_s, min(tr.disappear_s, t))]
        return [item]

    # ---- sequential, proactive

    def _pair(self, t: float, rng: np.random.Generator) -> list[list[dict[str, Any]]]:
        out = []
        for (first,) in self._colour(t, rng):
            colour = first["options"][ord(first["answer"]) - ord("A")]
            rows = [i for i, tr in enumerate(self.tracks) if tr.colour == colour]
            follow_ups = {}
            for delay in FOLLOW_UP_DELAYS_S:
                t2 = t + delay
                now = self._steady(rows, t2) if t2 <= self.duration_s - 1.0 else None
                if now is not None:
                    follow_ups.setdefault("yes" if now else "no", (t2, self._since(rows, t2)))
            if not follow_ups:
                continue
            answer = sorted(follow_ups)[int(rng.integers(len(follow_ups)))]
            t2, since = follow_ups[answer]
            first["key"] = f"pair@{t}"
            second = {
                "time_s": t2, "kind": "yes_no", "text": SEQUENTIAL_FOLLOW_UP, "options": [],
                "follows_key": first["key"], "answer": answer, "evidence_s": [since, t2],
            }  # fmt: skip
            out.append([first, second])
        return out

    def _proactive(self, t: float, rng: np.random.Generator) -> list[list[dict[str, Any]]]:
        out = []
        for colour in COLOURS:
            rows = [i for i, tr in enumerate(self.tracks) if tr.colour == colour]
            later = [self.tracks[i] for i in rows if self.tracks[i].appear_s > t]
            if self._steady(rows, t) != [] or len(later) != 1:
                continue
            target = later[0]
            end = target.appear_s + PROACTIVE_WINDOW_S
            if target.appear_s < t + PROACTIVE_LEAD_S or end > self.duration_s - TIME_STEP_S:
                continue
            item = {
                "time_s": t, "kind": "proactive", "text": PROACTIVE.format(colour=colour), "options": [],
                "trigger": PROACTIVE_TRIGGER.format(colour=colour), "answer": target.shape,
                "evidence_s": [target.appear_s, target.disappear_s], "window_s": [target.appear_s, end],
            }  # fmt: skip
            out.append([item])
        return out

    # ---- visibility

    def _frame(self, t: float) -> int:
        return min(int(np.floor(t * self.fps + 1e-6)), self.n_frames - 1)

    def _steady(self, rows: list[int], t: float) -> list[int] | None:
        """Tracks among rows on screen at t, or None if that set changed within STABLE_S before t."""
        key = (tuple(rows), t)
        if key not in self._steady_memo:
            self._steady_memo[key] = self._steady_uncached(rows, t)
        return self._steady_memo[key]

    def _steady_uncached(self, rows: list[int], t: float) -> list[int] | None:
        lo, hi = self._frame(max(t - STABLE_S, 0.0)), self._frame(t)
        window = self.visible[rows, lo : hi + 1]
        if not (window.all(axis=1) | ~window.any(axis=1)).all():
            return None
        return [r for r, on in zip(rows, window[:, -1], strict=True) if on]

    def _since(self, rows: list[int], t: float) -> float:
        """Time of the first frame of the unchanged stretch of rows' visibility that ends at t."""
        k = self._frame(t)
        same = (self.visible[rows, : k + 1] == self.visible[rows, k : k + 1]).all(axis=0)
        changed = np.flatnonzero(~same)
        return (int(changed[-1]) + 1 if changed.size else 0) / self.fps


def _fits(candidate: list[dict[str, Any]], chosen: list[dict[str, Any]]) -> bool:
    """No two questions of a sample closer than MIN_QUERY_GAP_S, and no question asked twice."""
    for item in candidate:
        for q in chosen:
            if abs(item["time_s"] - q["time_s"]) < MIN_QUERY_GAP_S or (
                item["text"] == q["text"] and item["kind"] != "yes_no"
            ):
                return False
    return True


def _mcq(t: float, text: str, options: list[str], answer: str, rng: np.random.Generator) -> dict[str, Any]:
    shuffled = [options[i] for i in rng.permutation(len(options))]
    return {"time_s": t, "kind": "mcq", "text": text, "options": shuffled, "answer": _letter(shuffled.index(answer))}


def _count_mcq(t: float, text: str, count: int, rng: np.random.Generator) -> dict[str, Any]:
    """Four consecutive numbers, in order, that include the count."""
    low = int(rng.integers(max(0, count - 3), count + 1))
    options = [str(n) for n in range(low, low + 4)]
    return {"time_s": t, "kind": "mcq", "text": text, "options": options, "answer": _letter(count - low)}


def _letter(index: int) -> str:
    return "ABCD"[index]


def _name(track: Track) -> str:
    return f"{track.colour} {track.shape}"
