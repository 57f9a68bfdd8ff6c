"""Streaming video-language benchmark harness: the engine (records, video, simulator, runner)."""
