"""The config reaches the core through one explicit adapter per section: every key is wired, none by name."""
import dataclasses
import inspect

import pytest

from alexnet_exp.augment import BatchAugmenter
from alexnet_exp.config import AugmentConfig, DataConfig, TrainConfig
from alexnet_exp.data import load_dataset
from alexnet_exp.run_parts import RESOLVED_TRAIN_KEYS, dataset_kwargs, fit_settings
from alexnet_exp.train import FitSettings


def test_every_train_key_reaches_fit_and_only_device_stays_behind():
    fields = {f.name for f in dataclasses.fields(FitSettings)}
    # a new train key must be wired here, or resolved into one that is (the scales into lr and weight_decay)
    assert fields == set(TrainConfig.model_fields) - {"device"} - set(RESOLVED_TRAIN_KEYS)
    assert set(RESOLVED_TRAIN_KEYS.values()) <= fields
    cfg = TrainConfig(optimizer="adamw", lr=0.02, momentum=0.5, weight_decay=0.05, batch_size=32, epochs=7,
                      schedule="step", warmup_epochs=2, step_epochs=3, lr_factor=0.5, plateau_patience=4,
                      label_smoothing=0.1, seed=11, eval_batch_size=99, stall_epochs=6, loss_every_steps=5,
                      compile=True)
    settings = fit_settings(cfg)
    assert {name: getattr(settings, name) for name in fields} == {name: getattr(cfg, name) for name in fields}


def test_scales_reach_fit_as_the_rates_they_resolve_to():
    cfg = TrainConfig(optimizer="sgd", lr_scale=2.0, batch_size=64, weight_decay_scale=0.5,
                      lr_reference={"sgd": 0.04}, weight_decay_reference={"sgd": 1e-3})
    settings = fit_settings(cfg)
    assert settings.lr == pytest.approx(0.04 * 2.0 * 64 / 256)  # sgd: linear in the batch size
    assert settings.weight_decay == pytest.approx(1e-3 * 0.5)
    adam = fit_settings(TrainConfig(optimizer="adam", lr_scale=1.0, batch_size=64))
    assert adam.lr == pytest.approx(3e-4 * 0.5)  # adam: sqrt(64 / 256) of its reference


def test_every_data_key_reaches_load_dataset():
    kwargs = dataset_kwargs(DataConfig(dataset="synthetic", synthetic_classes=4, synthetic_train_size=100,
                                       synthetic_test_size=20, max_train=40, val_fraction=0.2, download=False))
    assert set(kwargs) == set(DataConfig.model_fields)  # a new data key must be wired here
    assert set(kwargs) <= set(inspect.signature(load_dataset).parameters)
    data = load_dataset(**kwargs)
    assert data.num_classes == 4 and len(data.train_y) == 40 and len(data.val_y) == 20


def test_inner_defaults_are_the_configs():
    """Where an inner function keeps a default, it is the config's: a caller that leaves it out gets what a
    YAML that leaves it out gets."""
    params = inspect.signature(load_dataset).parameters
    for name, field in DataConfig.model_fields.items():
        if name != "dataset":
            assert params[name].default == field.default, name
    augment, aug_params = AugmentConfig(), inspect.signature(BatchAugmenter).parameters
    assert aug_params["crop_padding"].default == (augment.crop_padding if augment.crop else 0)
    assert aug_params["flip"].default == augment.flip
    assert aug_params["pca_sigma"].default == augment.pca_color
    assert aug_params["normalize"].default == augment.normalize
    assert aug_params["crop_size"].default == augment.eval_crop_size
    assert aug_params["ten_crop"].default == augment.ten_crop_on
