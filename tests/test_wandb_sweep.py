"""The W&B sweep file drives the same Hydra configs: the agent's arguments are valid overrides."""

from __future__ import annotations

import itertools
from pathlib import Path

import yaml
from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

from tests.conftest import compose_cfg

ROOT = Path(__file__).resolve().parents[1]


def test_every_run_of_the_wandb_sweep_is_a_valid_training_command():
    sweep = yaml.safe_load((ROOT / "sweeps" / "wandb_losses_architectures.yaml").read_text())
    assert (ROOT / sweep["program"]).is_file() and "${args_no_hyphens}" in sweep["command"]
    names = list(sweep["parameters"])
    for values in itertools.product(*(sweep["parameters"][n]["values"] for n in names)):
        # What `wandb agent` appends to the command for this run: `model=fcn loss=ce seed=0`.
        args = create_sweep_command_args({"args": {n: {"value": v} for n, v in zip(names, values, strict=True)}})
        extra = [c for c in sweep["command"] if not c.startswith("${")]
        cfg = compose_cfg([*args["args_no_hyphens"], *extra])
        assert cfg.seed == values[names.index("seed")]
        assert cfg.model.arch == values[names.index("model")]
