"""Runs one job: shards, concurrent streams, records on disk, resume."""
