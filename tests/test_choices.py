"""Each named choice once (issue 22, item 3): every name a config accepts has its builder, and every builder
its name. A new optimiser, schedule, sampler, pruner, dataset or normalisation added on one side only fails
here, not in the first sweep that picks it."""
import typing

import pytest
import torch

from alexnet_exp import augment, choices, config, data, rates
from alexnet_exp.sweep.search import pruning, samplers
from alexnet_exp.train import optim


def _accepted(section, field: str) -> set:
    """The values the config's `section.field` takes (its Literal)."""
    annotation = section.model_fields[field].annotation
    return set(typing.get_args(annotation))


@pytest.mark.parametrize("names, section, field, built", [
    (choices.OPTIMIZERS, config.TrainConfig, "optimizer", set(optim.OPTIMIZER_CLASSES)),
    (choices.SCHEDULES, config.TrainConfig, "schedule", set(optim._SCHEDULES)),
    (choices.SAMPLERS, config.StudyConfig, "sampler", {*samplers.PER_TRIAL_SAMPLERS, "grid"}),
    (choices.PRUNERS, config.StudyConfig, "pruner", {*pruning.PRUNER_BUILDERS, "none"}),
    (choices.DATASETS, config.DataConfig, "dataset", {*data.IN_MEMORY_DATASETS, data.FOLDER_DATASET}),
    (choices.NORMALIZATIONS, config.AugmentConfig, "normalize", set(augment.NORMALIZATIONS)),
], ids=["optimizer", "schedule", "sampler", "pruner", "dataset", "normalize"])
def test_every_name_has_its_builder_and_back(names, section, field, built):
    assert len(set(names)) == len(names)
    assert _accepted(section, field) == set(names) == built


def test_every_batch_scaling_has_its_factor():
    annotation = config.TrainConfig.model_fields["lr_batch_scaling"].annotation  # dict[optimizer, scaling]
    key, value = typing.get_args(annotation)
    assert set(typing.get_args(key)) == set(choices.OPTIMIZERS)
    assert set(typing.get_args(value)) == set(choices.BATCH_SCALINGS) == set(rates.BATCH_FACTORS)


def test_every_builder_builds():
    """Each table's entries make what they name, with the options the config gives them."""
    weights = [torch.nn.Parameter(torch.zeros(2))]
    for name in choices.OPTIMIZERS:
        made = optim.make_optimizer(weights, name, 0.1, momentum=0.9, nesterov=False, weight_decay=0.0, fused=False)
        assert isinstance(made, optim.OPTIMIZER_CLASSES[name])
        assert made.defaults.get("momentum", 0.9) == 0.9  # SGD's momentum reached it
    for name in choices.SCHEDULES:
        opt = torch.optim.SGD(weights, lr=0.1)
        schedule = optim.Schedule(opt, name, epochs=3, steps_per_epoch=2, lr=0.1)
        for _ in range(6):
            opt.step()
            schedule.after_step()
        schedule.after_epoch(0.5)
    for name in choices.PRUNERS:
        assert pruning.make_pruner(name, {}, epochs=5) is not None
    for name in choices.SAMPLERS:
        space = {"train.lr": config.config_from_dict(
            {"space": {"train.lr": {"type": "categorical", "choices": [0.1, 0.01]}}}).space["train.lr"]}
        assert samplers.make_sampler(name, {}, 0, space) is not None
    stats = augment.ColorStats(torch.full((3,), 0.5), torch.full((3,), 0.25), torch.ones(3), torch.eye(3))
    for name in choices.NORMALIZATIONS:
        mean, std = augment.NORMALIZATIONS[name](stats)
        assert mean.shape == std.shape == (3,) and bool((std > 0).all())
