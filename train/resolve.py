"""The run's config, resolved once: the command line parsed and checked, the shard paths made
absolute, the dataset card read, --recipe auto applied (train/recipe.py) and the checks that
need the recipe's values. The result is a new frozen Config (train/config.py), made before
anything is built, so every part of the run (the Accelerator, the data, the model, config.json,
each checkpoint) reads the same value and nothing after this step can assign to it."""
from dataclasses import dataclass, replace

from pipeline import loader as data
from pipeline.shards import absolute_specs
from train import config
from train.recipe import apply_recipe


@dataclass(frozen=True)
class Resolved:
    cfg: config.Config
    ds: data.Dataset        # the shards of each split and the card the recipe read
    recipe: dict            # {field: (old, new)} what --recipe auto set (printed at start)


def resolve(argv=None) -> Resolved:
    cfg = config.parse(argv)
    # absolute, so that config.json names the shards wherever it is read from (rank_labels)
    cfg = replace(cfg, **{k: absolute_specs(getattr(cfg, k)) for k in ("data", "val_data", "test_data")})
    ds = data.resolve(cfg.data, cfg.val_data, cfg.test_data, cfg.trust_urls)
    cfg, recipe = apply_recipe(cfg, ds.card, config.given(argv))   # RESULTS.md, "Tuning"
    config.check_resolved(cfg)
    return Resolved(cfg, ds, recipe)
