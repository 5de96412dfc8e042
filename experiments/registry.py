"""The registry of architectures: every experiment config and its named variants, read from
``experiments/registry.yaml``.

A variant is an experiment config plus command-line overrides (``image only`` is
``experiments/metablock.yaml`` with ``--model.init_args.fusion=none``). ``compare`` trains one
table row per variant, ``bench_gpu`` times each experiment, and the network contract test builds
every variant's network, all from this one list. The list lives in its own file rather than in
the experiment configs, because the training CLI refuses keys it does not know and the table's
order runs across experiments.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from experiments.net_options import NET_PREFIX, ConfigError, expand_net_shorthands

EXPERIMENTS_DIR = Path(__file__).resolve().parent
REGISTRY = EXPERIMENTS_DIR / "registry.yaml"
NET_CLASS_PATH = "--model.init_args.net.class_path"


@dataclass(frozen=True)
class Variant:
    name: str  # the row's name in the comparison table
    experiment: str  # experiments/<experiment>.yaml
    overrides: tuple[str, ...]  # ``--key=value`` command-line overrides of that config

    @property
    def config(self) -> str:
        """The experiment config as ``make train`` names it, relative to the repository root."""
        return f"experiments/{self.experiment}.yaml"

    @property
    def config_path(self) -> Path:
        return EXPERIMENTS_DIR / f"{self.experiment}.yaml"


def variants(path: Path = REGISTRY) -> list[Variant]:
    """Every variant, experiment by experiment, in the file's order."""
    content = yaml.safe_load(Path(path).read_text())
    if not isinstance(content, dict) or not content:
        raise ConfigError(f"{path}: expected a mapping of experiment -> {{variant name: [overrides]}}")
    found: list[Variant] = []
    for experiment, named in content.items():
        if not (EXPERIMENTS_DIR / f"{experiment}.yaml").is_file():
            raise ConfigError(f"{path}: experiment {experiment!r} has no config experiments/{experiment}.yaml")
        if not isinstance(named, dict) or not named:
            raise ConfigError(f"{path}: {experiment}: expected a mapping of variant name -> [overrides]")
        for name, overrides in named.items():
            overrides = [] if overrides is None else overrides
            if not isinstance(overrides, list) or not all(isinstance(o, str) and o.startswith("--") and "=" in o
                                                          for o in overrides):
                raise ConfigError(f"{path}: {experiment}: {name}: overrides must be a list of --key=value")
            if any(v.name == str(name) for v in found):
                raise ConfigError(f"{path}: the variant name {name!r} is used twice")
            found.append(Variant(str(name), str(experiment), tuple(overrides)))
    return found


def experiments(path: Path = REGISTRY) -> list[str]:
    """The registered experiments, in the file's order."""
    return list(dict.fromkeys(v.experiment for v in variants(path)))


def network_config(variant: Variant) -> dict[str, Any]:
    """The variant's network, ``{"class_path": ..., "init_args": {...}}``: the experiment config's
    ``model.init_args.net`` with the variant's network overrides applied (short names expanded as
    the CLI expands them; overrides of the module or the data are not the network's and are left out)."""
    config = yaml.safe_load(variant.config_path.read_text())
    net = dict(config["model"]["init_args"]["net"])
    options = dict(net.get("init_args") or {})
    args = expand_net_shorthands(["--config", str(variant.config_path), *variant.overrides],
                                 [EXPERIMENTS_DIR / "base.yaml"])  # fmt: skip
    for arg in args[2:]:
        key, _, value = arg.partition("=")
        if key == NET_CLASS_PATH:
            net["class_path"], options = value, {}
        elif key.startswith(NET_PREFIX):
            options[key[len(NET_PREFIX):]] = yaml.safe_load(value)
    return {"class_path": net["class_path"], "init_args": options}
