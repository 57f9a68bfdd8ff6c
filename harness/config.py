"""Typed configs of a job: parse Hydra's composed config into a `Job` (what decides the answers,
hashed) and a `RunSettings` (how it runs, never hashed)."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

import backends
from harness import benchmarks, encoders, memory, routers, scheduler
from harness.encoders.checkpoint import checkpoint_digest
from harness.errors import ConfigError
from harness.hashing import content_hash
from harness.judge import JudgeConfig, is_judged
from harness.registry import Choice, Registry, answer_fields, plain, schema_node
from harness.system import SystemConfig, latency_model

COMPONENTS: dict[str, Registry[Any]] = {
    "dataset": benchmarks.DATASETS,
    "backend": backends.BACKENDS,
    "router": routers.ROUTERS,
    "memory": memory.MEMORIES,
    "scheduler": scheduler.SCHEDULERS,
    "encoder": encoders.ENCODERS,
}


class Scoring(str, Enum):
    official = "official"  # each benchmark's official rules only
    robust = "robust"  # also a stricter answer parser, shown as separate columns (never in the official number)


@dataclass
class RunConfig:
    """How a job runs. None of it changes an answer, so none of it is in the config hash."""

    name: str = "default"  # the sweep folder: <output_root>/<name>/
    output_root: str = "outputs"
    concurrency: int = 4  # streams played at once
    retry_errors: bool = False  # re-run queries whose record is an error
    progress: bool = True  # tqdm bar per job
    embedding_cache: str | None = ".cache/embeddings"  # frame embeddings shared across jobs; null: off
    judge_cache: str | None = ".cache/judgments.sqlite"  # LLM-judge outputs shared across jobs; null: off
    response_cache: str | None = ".cache/responses.sqlite"  # API backends' replies shared across jobs; null: off
    estimate: bool = False  # print the expected calls, images, tokens and cost of each job, then stop
    budget_usd: float | None = None  # stop the job cleanly once its API calls would cost more; null: no cap
    torch_threads: int | None = 1  # CPU threads per torch op; 1: streams already run in parallel; null: default
    scoring: Scoring = Scoring.official  # set from the top-level `scoring` key (what the tables show)
    only_queries: str | None = None  # a file of query ids, one per line: only these are asked (a routing rerun)


@dataclass
class ShardConfig:
    """Samples are split by a stable hash of their id; a job runs one shard or all of them."""

    count: int = 4
    index: int | None = None  # None: every shard, in this job


@dataclass
class RootConfig:
    """The top level; unknown keys fail at compose time."""

    dataset: Any = MISSING
    backend: Any = MISSING
    router: Any = MISSING
    memory: Any = MISSING
    scheduler: Any = MISSING
    encoder: Any = MISSING
    system: Any = MISSING
    judge: Any = MISSING
    scoring: Scoring = Scoring.official
    run: RunConfig = field(default_factory=RunConfig)
    shard: ShardConfig = field(default_factory=ShardConfig)


@dataclass(frozen=True)
class Job:
    """Everything that decides the answers. Its hash names the records it produces."""

    dataset: Choice
    backend: Choice
    router: Choice
    memory: Choice
    scheduler: Choice
    encoder: Choice
    system: SystemConfig
    judge: JudgeConfig = field(default_factory=JudgeConfig)

    def semantic(self) -> dict[str, Any]:
        """The job as plain data (what config.yaml holds and the hash covers).

        Backend fields a config class lists in `run_only` (an API backend's base_url, api_key_env, timeout_s,
        cache, retry, limits, price) are left out: they decide how calls are made, never what they answer, so
        raising a timeout or a rate limit, moving to a proxy or updating prices keeps the folder and its records.
        """
        choices = (self.dataset, self.backend, self.router, self.memory, self.scheduler, self.encoder)
        out = {c.kind: _with_artifacts(answer_fields(c.config)) for c in choices}
        out["dataset"].pop("on_bad_item", None)  # which items run, never what they answer: same folder, same hash
        if (asked := self.scheduler_backend()) is not None:
            out["scheduler"]["backend"] = _with_artifacts(answer_fields(asked.config))
        out["system"] = system = plain(self.system)
        for route in ("s1", "s2"):  # a route's own backend, only where one is set: other jobs keep their hash
            node = system[route].pop("backend")
            if node is not None:
                system[route]["backend"] = _with_artifacts(answer_fields(backends.BACKENDS.parse(node).config))
            if system[route]["latency_model"] is None:  # added later: jobs without one keep their hash
                del system[route]["latency_model"]
        if not self.system.realtime:  # the realtime knobs change nothing when it is off: other jobs keep their hash
            for key in ("realtime", "busy_policy", "latency"):
                del system[key]
        if self.judge.backend is not None:  # only judged benchmarks have one; other jobs keep their hash
            judge_backend = answer_fields(self.judge_backend().config)
            out["judge"] = {**plain(self.judge), "backend": _with_artifacts(judge_backend)}
        return out

    def scheduler_backend(self) -> Choice | None:
        """The backend a scheduler asks (`scheduler=llm`), parsed like any backend; None for the others."""
        node = getattr(self.scheduler.config, "backend", None)
        return None if node is None else backends.BACKENDS.parse(node)

    def judge_backend(self) -> Choice:
        return backends.BACKENDS.parse(self.judge.backend)

    def route_backends(self) -> dict[str, Choice]:
        """The backend of each route: its own (`backend@system.s1.backend=...`) or the job's."""
        routes = {"S1": self.system.s1.backend, "S2": self.system.s2.backend}
        return {
            route: self.backend if node is None else backends.BACKENDS.parse(plain(node))
            for route, node in routes.items()
        }

    def config_hash(self) -> str:
        canon = json.dumps(self.semantic(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()[:16]


def register() -> None:
    """Store the schemas Hydra validates against (components register their own on import)."""
    store = ConfigStore.instance()
    store.store(name="schema_root", node=RootConfig)
    store.store(group="schema/system", name="default", node=schema_node(SystemConfig))
    store.store(group="schema/judge", name="default", node=schema_node(JudgeConfig))
    if not OmegaConf.has_resolver("slug"):
        OmegaConf.register_new_resolver("slug", slug)


def slug(text: str) -> str:
    """A folder name from Hydra's override string: unsafe characters become '_', empty is 'default'."""
    return re.sub(r"[^A-Za-z0-9=,._+-]", "_", text) or "default"


def load_job(cfg: DictConfig) -> tuple[Job, RunConfig, ShardConfig]:
    """Parse every node of a composed config; raises ConfigError naming the node and the fix."""
    choices = {kind: registry.parse(cfg[kind]) for kind, registry in COMPONENTS.items()}
    try:
        system = OmegaConf.to_object(OmegaConf.merge(schema_node(SystemConfig), cfg.system))
        judge = _judge(cfg.get("judge"), choices["dataset"])
        for route in ("s1", "s2"):  # a route's own backend is checked like the job's
            if cfg.system[route].get("backend") is not None:
                backends.BACKENDS.parse(cfg.system[route].backend)
        run = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RunConfig), cfg.run))
        run.scoring = Scoring(cfg.get("scoring", "official"))
        shard = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ShardConfig), cfg.shard))
    except OmegaConfBaseException as e:
        raise ConfigError(f"{e}") from None
    if shard.count < 1 or (shard.index is not None and not 0 <= shard.index < shard.count):
        raise ConfigError(
            f"shard.index={shard.index} with shard.count={shard.count}: "
            "the index must be in 0..count-1 (or null for all shards)"
        )
    if run.concurrency < 1:
        raise ConfigError(f"run.concurrency={run.concurrency}: must be >= 1")
    for route in ("S1", "S2"):
        latency_model(system, route)  # a malformed latency model fails here, not mid-stream
    if system.proactive.poll_s <= 0:
        raise ConfigError(f"system.proactive.poll_s={system.proactive.poll_s}: must be > 0 (seconds between polls)")
    if run.budget_usd is not None and run.budget_usd <= 0:
        raise ConfigError(f"run.budget_usd={run.budget_usd}: must be > 0 (dollars), or null for no cap")
    return Job(system=system, judge=judge, **choices), run, shard  # type: ignore[arg-type]


def _judge(node: DictConfig | None, dataset: Choice) -> JudgeConfig:
    """The judge of a judged benchmark (required there); no judge for any other benchmark."""
    if node is None or node.get("backend") is None:
        if is_judged(benchmarks.DATASETS.implementation(dataset.name)):
            raise ConfigError(
                f"dataset={dataset.name} is scored by an LLM judge, and no judge is configured: add "
                "`judge=llm backend@judge.backend=<backend>` (e.g. openai with judge.backend.base_url= a server of "
                "the official judge model; see datasets/" + dataset.name + "/README.md)"
            )
        return JudgeConfig()
    if not is_judged(benchmarks.DATASETS.implementation(dataset.name)):
        return JudgeConfig()  # nothing to judge: the judge must not change the job's hash
    backend = backends.BACKENDS.parse(node.backend)  # checks the judge backend's node like any backend
    fields = OmegaConf.to_container(node, resolve=True)
    fields["backend"] = plain(backend.config)  # type: ignore[index]
    return JudgeConfig(**fields)  # type: ignore[arg-type]


def _with_artifacts(plain: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint file or model folder named by path counts by its content: retraining into the same path
    changes the job's hash, so its records are never mixed with the old model's."""
    checkpoint, model_path = plain.get("checkpoint"), plain.get("model_path")
    if checkpoint and Path(checkpoint).is_file():
        plain["checkpoint_sha256"] = content_hash(checkpoint)
    if model_path and (Path(model_path) / "config.json").is_file():
        plain["model_sha256"] = checkpoint_digest(Path(model_path))
    return plain
