"""Every shipped conf option composes, parses to its typed config, and uses one name everywhere."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.types import RunMode
from omegaconf import OmegaConf

from harness.benchmarks import DATASETS
from harness.config import COMPONENTS, load_job, register
from harness.judge import is_judged
from tests.helpers import CONF

GROUPS = [*COMPONENTS, "system", "judge"]
OPTIONS = [(group, path.stem) for group in GROUPS for path in sorted((CONF / group).glob("*.yaml"))]
JUDGED = sorted(name for name in DATASETS.names() if is_judged(DATASETS.implementation(name)))


@pytest.mark.parametrize(("group", "option"), OPTIONS)
def test_option_composes_and_parses(group, option, tmp_path):
    register()
    extra = ["judge=llm"] if group == "dataset" and option in JUDGED else []  # a judged benchmark needs a judge
    extra += [f"dataset={JUDGED[0]}"] if group == "judge" and option != "none" and JUDGED else []  # kept where used
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"{group}={option}", *extra])
    assert cfg[group].name == option, f"conf/{group}/{option}.yaml must say name: {option}"
    job, run, shard = load_job(cfg)
    parsed = job.system if group == "system" else job.judge if group == "judge" else getattr(job, group).config
    assert parsed.name == option
    # the YAML spells out every field of its schema, so the file documents all knobs
    written = OmegaConf.load(CONF / group / f"{option}.yaml")
    from_defaults = {"defaults", "backend"} if group in ("judge", "scheduler") else {"defaults"}  # backend: own file
    assert set(OmegaConf.to_container(OmegaConf.structured(parsed))) <= set(written) | from_defaults


@pytest.mark.parametrize("kind", list(COMPONENTS))
def test_every_registered_name_has_a_conf_file(kind):
    registry = COMPONENTS[kind]
    shipped = [n for n in registry.names() if not registry.implementation(n).__module__.startswith("tests.")]
    assert shipped == sorted(p.stem for p in (CONF / kind).glob("*.yaml"))


def test_every_experiment_composes():
    register()
    for path in sorted((CONF / "experiment").glob("*.yaml")):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("config", overrides=[f"+experiment={path.stem}"], return_hydra_config=True)
        load_job(cfg)
        if cfg.hydra.mode == RunMode.MULTIRUN:
            assert cfg.hydra.sweeper.params, f"{path.name} runs a sweep, so it declares its axes"
