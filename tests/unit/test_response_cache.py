"""The SQLite response cache: keys canonical, values shared between connections (processes)."""

from __future__ import annotations

import multiprocessing

from harness.response_cache import ResponseCache, request_key


def _put(path: str, key: str) -> None:
    cache = ResponseCache(path)
    cache.put(key, {"text": "from another process"})
    cache.close()


def test_keys_ignore_dict_order_and_change_with_any_value():
    assert request_key({"a": 1, "b": [1, "x"]}) == request_key({"b": [1, "x"], "a": 1})
    assert request_key({"a": 1, "b": [1, "x"]}) != request_key({"a": 1, "b": [1, "y"]})


def test_values_round_trip_and_are_seen_by_another_process(tmp_path):
    path = tmp_path / "cache" / "responses.sqlite"
    cache = ResponseCache(path)
    assert cache.get("k") is None
    cache.put("k", {"text": "ja", "n": [1, 2]})
    assert cache.get("k") == {"text": "ja", "n": [1, 2]}
    worker = multiprocessing.get_context("spawn").Process(target=_put, args=(str(path), "other"))
    worker.start()
    worker.join(60)
    assert worker.exitcode == 0
    assert cache.get("other") == {"text": "from another process"}
    cache.close()
    assert ResponseCache(path).get("k") == {"text": "ja", "n": [1, 2]}  # on disk, not in memory
