"""``hydra.sweeper.params`` and the command line's overrides, in Hydra's override grammar, as Optuna
distributions (the swept keys) and fixed overrides (the rest, passed to every trial).

``interval(a, b)``: floats in [a, b]; ``tag(log, interval(a, b))``: the same on a log scale;
``tag(int, interval(a, b))`` (or ``tag(int, log, ...)``): integers; ``choice(x, y, ...)``:
categorical; ``range(a, b, step)``: Hydra's values (b excluded) as an int or stepped float
distribution; ``shuffle(range(...))``: categorical.
"""

from collections.abc import Mapping, Sequence
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from semseg.errors import ConfigError


def _values(override: Override) -> list[Any]:
    return list(override.sweep_iterator(transformer=Transformer.encode))


def _distribution(override: Override) -> BaseDistribution:
    key = override.get_key_element()
    sweep = override.value()
    if override.is_choice_sweep() or (override.is_range_sweep() and sweep.shuffle):
        return CategoricalDistribution(_values(override))
    if override.is_range_sweep():
        values = _values(override)
        if not values:
            raise ConfigError(
                f"hydra.sweeper.params.{key}: {override.input_line} has no values; fix its start and stop"
            )
        if all(isinstance(v, int) for v in values):
            low, high = min(values), max(values)
            return IntDistribution(low, high, step=abs(int(sweep.step)))
        return FloatDistribution(min(values), max(values), step=abs(float(sweep.step)))
    if override.is_interval_sweep():  # Hydra makes its ends floats
        log = "log" in sweep.tags
        if "int" in sweep.tags:
            return IntDistribution(round(sweep.start), round(sweep.end), log=log)
        return FloatDistribution(sweep.start, sweep.end, log=log)
    raise ConfigError(
        f"hydra.sweeper.params.{key}: {override.input_line} is not a sweep Optuna can sample; use interval(a, b), "
        "tag(log, interval(a, b)), choice(x, y) or range(a, b, step)"
    )


def parse_search_space(
    params: Mapping[str, Any] | None, arguments: Sequence[str]
) -> tuple[dict[str, BaseDistribution], list[str]]:
    """The distributions of the swept keys and the fixed overrides. A command-line override of a key
    in ``params`` wins over it (``optimizer.lr=0.001`` takes it out of the search)."""
    lines = [f"{key}={value}" for key, value in (params or {}).items()] + list(arguments)
    by_key: dict[str, Override] = {}
    for override in OverridesParser.create().parse_overrides(lines):
        by_key.pop(override.get_key_element(), None)  # a later override of a key replaces it, in its place
        by_key[override.get_key_element()] = override
    distributions = {key: _distribution(o) for key, o in by_key.items() if o.is_sweep_override()}
    fixed = [o.input_line for o in by_key.values() if not o.is_sweep_override()]
    return distributions, fixed


def grid_search_space(distributions: Mapping[str, BaseDistribution]) -> dict[str, list[Any]]:
    """Every value of each distribution, for ``GridSampler``; continuous ones have none to list."""
    grid = {}
    for key, distribution in distributions.items():
        if isinstance(distribution, CategoricalDistribution):
            grid[key] = list(distribution.choices)
        elif isinstance(distribution, IntDistribution) and not distribution.log:
            grid[key] = list(range(distribution.low, distribution.high + 1, distribution.step))
        elif isinstance(distribution, FloatDistribution) and distribution.step is not None:
            count = round((distribution.high - distribution.low) / distribution.step) + 1
            grid[key] = [distribution.low + i * distribution.step for i in range(count)]
        else:
            raise ConfigError(
                f"hydra.sweeper.params.{key}: the grid sampler needs listed values; use choice(...) or range(...), "
                "or another sampler (hydra/sweeper/sampler=tpe)"
            )
    return grid
