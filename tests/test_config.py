import pydantic
import pytest

from alexnet_exp.config import ConfigError, config_from_dict, load_config, parse_yaml


def errors_of(raw):
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw)
    return info.value.errors


def test_typo_is_rejected_with_suggestion_and_valid_keys():
    (error,) = errors_of({"train": {"lrr": 0.1}})
    assert error.startswith("train.lrr: unknown key")
    assert "did you mean 'lr'" in error
    assert "batch_size" in error  # lists the valid keys


def test_unknown_section_is_rejected():
    (error,) = errors_of({"trian": {}})
    assert "trian" in error and "did you mean 'train'" in error


def test_wrong_type_names_its_path():
    (error,) = errors_of({"train": {"batch_size": "many"}})
    assert error.startswith("train.batch_size:") and "'many'" in error


def test_out_of_range_and_invalid_choice_all_reported_at_once():
    errors = errors_of({"train": {"lr": -1.0, "epochs": 0}, "model": {"norm": "layernorm"}})
    paths = sorted(e.split(":")[0] for e in errors)
    assert paths == ["model.norm", "train.epochs", "train.lr"]
    assert any("'lrn', 'batchnorm', 'conv1_batchnorm' or 'none'" in e for e in errors)


def test_low_greater_than_high_is_rejected():
    (error,) = errors_of({"space": {"train.lr": {"type": "float", "low": 0.1, "high": 0.001, "log": True}}})
    assert error.startswith("space.train.lr:") and "low (0.1) > high (0.001)" in error


def test_space_choices_are_checked_against_the_schema():
    errors = errors_of({"space": {
        "model.norm": {"type": "categorical", "choices": ["lrn", "bn"]},
        "train.optimzer": {"type": "categorical", "choices": ["sgd"]},
        "train.momentum": {"type": "float", "low": 0.0, "high": 0.9, "when": {"train.optimizer": "sgd"}},
    }})
    assert any(e.startswith("space.model.norm:") and "'bn'" in e for e in errors)
    assert any(e.startswith("space.train.optimzer:") and "train.optimizer" in e for e in errors)
    assert any(e.startswith("space.train.momentum.when:") for e in errors)


def test_pyyaml_style_exponent_is_a_float(tmp_path):
    assert parse_yaml("lr: 1e-4") == {"lr": 1e-4}
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 5e-3\n  weight_decay: 1e-4\n")
    config = load_config(path)
    assert config.train.lr == 5e-3 and isinstance(config.train.lr, float)
    assert config.train.weight_decay == 1e-4


def test_precedence_defaults_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 0.05\n  epochs: 4\n")
    config = load_config(path, ["train.epochs=7", "model.norm=batchnorm"])
    assert config.train.lr == 0.05  # YAML over default
    assert config.train.epochs == 7  # override over YAML
    assert config.model.norm == "batchnorm"
    assert config.train.batch_size == 128  # default


def test_bad_override_is_rejected(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("{}\n")
    with pytest.raises(ConfigError, match="train.lr"):
        load_config(path, ["train.lr=fast"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(path, ["train.lr"])


def test_missing_file_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_config_is_immutable_and_with_values_revalidates():
    config = config_from_dict({})
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        config.train.lr = 1.0
    changed = config.with_values({"train.lr": 0.2, "model.norm": "none"})
    assert changed.train.lr == 0.2 and changed.model.norm == "none" and config.train.lr == 0.01
    with pytest.raises(ConfigError, match="train.lr"):
        config.with_values({"train.lr": -2})


def test_nesterov_without_momentum_is_rejected():
    (error,) = errors_of({"train": {"nesterov": True, "momentum": 0.0}})
    assert "nesterov" in error and "momentum" in error


def test_shipped_configs_validate():
    from pathlib import Path

    for path in sorted(Path(__file__).resolve().parents[1].glob("search_spaces/*.yaml")):
        load_config(path)


def test_a_misspelt_key_of_a_categorical_entry_lists_the_categorical_keys():
    with pytest.raises(ConfigError) as exc:
        config_from_dict({"space": {"train.optimizer": {"type": "categorical", "choise": ["sgd", "adam"]}}})
    message = str(exc.value)
    assert "space.train.optimizer.choise: unknown key (did you mean 'choices'?)" in message
    assert "valid keys here: type, choices, when" in message


def test_circular_conditions_are_a_config_error_with_their_path():
    with pytest.raises(ConfigError) as exc:
        config_from_dict({"space": {
            "train.lr": {"type": "float", "low": 0.01, "high": 0.1, "when": {"train.momentum": 0.9}},
            "train.momentum": {"type": "float", "low": 0.5, "high": 0.9, "when": {"train.lr": 0.05}}}})
    assert "space.train.lr.when: circular condition train.lr -> train.momentum -> train.lr" in str(exc.value)


SCALE_SPACE = {"train.lr_scale": {"type": "float", "low": 0.1, "high": 10, "log": True},
               "train.optimizer": {"type": "categorical", "choices": ["sgd", "adam"]},
               "train.batch_size": {"type": "categorical", "choices": [64, 512]}}


def test_a_rate_and_its_scale_given_together_are_refused(tmp_path):
    path = tmp_path / "both.yaml"
    path.write_text("train: {lr: 0.05, lr_scale: 2.0}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.errors == ["train.lr and train.lr_scale: give one; train.lr_scale resolves train.lr from "
                                 "its optimiser's reference (README, Learning rates); to train at a given lr, add "
                                 "--set train.lr_scale=null"]
    path.write_text("train: {lr_scale: 2.0}\n")  # an override that names the other is the same mistake
    with pytest.raises(ConfigError, match="train.lr and train.lr_scale: give one"):
        load_config(path, ["train.lr=0.1"])
    assert load_config(path).train.lr == pytest.approx(0.02 * 2.0 * 128 / 256)


def test_a_sampled_rate_beside_a_scale_is_refused():
    errors = errors_of({"train": {"lr_scale": 1.0},
                        "space": {"train.lr": {"type": "float", "low": 1e-3, "high": 0.1, "log": True}}})
    assert errors == ["space.train.lr: train.lr_scale is set, and it resolves train.lr, so a sampled train.lr "
                      "would be overwritten; sample train.lr_scale instead, or set train.lr_scale: null"]


def test_a_scale_that_resolves_out_of_range_names_the_scale():
    errors = errors_of({"train": {"lr_scale": 900.0, "batch_size": 512}})
    assert errors == ["train: lr_scale 900 resolves to lr 36 for sgd at batch 512, above 10; lower it"]


def test_a_baseline_rate_is_enqueued_as_the_scale_that_gives_it():
    from alexnet_exp.sweep.search.space import baseline_trial

    config = config_from_dict({"space": SCALE_SPACE, "baselines": [
        {"name": "paper", "train.optimizer": "sgd", "train.lr": 0.01, "train.batch_size": 64},
        {"name": "adam-far", "train.optimizer": "adam", "train.lr": 0.3, "train.batch_size": 512}]})
    params, fixed = baseline_trial(config.baselines[0], config)
    assert params == {"train.lr_scale": 2.0, "train.optimizer": "sgd", "train.batch_size": 64} and fixed == {}
    assert config.with_values({**params, **fixed}).train.lr == pytest.approx(0.01)  # it trains at its own rate
    params, fixed = baseline_trial(config.baselines[1], config)
    assert "train.lr_scale" not in params  # outside the space's range: fixed, not taught to the sampler
    assert config.with_values({**params, **fixed}).train.lr == pytest.approx(0.3)


def test_epochs_flag_shortens_a_sampled_warmup_too():
    from alexnet_exp.config import with_epochs_everywhere

    config = load_config("search_spaces/cifar100.yaml")
    assert config.space["train.warmup_epochs"].high == 3
    two = with_epochs_everywhere(config, 2)  # a warm-up must end before the last epoch: at most 1 of 2
    assert two.space["train.warmup_epochs"].high == 1 and two.train.epochs == 2
    one = with_epochs_everywhere(config, 1)
    assert "train.warmup_epochs" not in one.space and one.train.warmup_epochs == 0



def test_a_dumped_config_loads_again(tmp_path):
    """A trial's config.yaml artifact holds the scale and the rate it resolved to: they agree, and it loads."""
    from alexnet_exp.config import dump_config

    config = load_config("search_spaces/cifar100.yaml").with_values({"train.lr_scale": 2.5, "train.batch_size": 64})
    path = tmp_path / "config.yaml"
    path.write_text(dump_config(config))
    again = load_config(path)
    assert again.train.lr == config.train.lr == pytest.approx(0.02 * 2.5 * 64 / 256)
    assert load_config(path, ["train.lr_scale=null", "train.lr=0.3"]).train.lr == 0.3


def test_a_rate_set_as_a_value_is_not_overwritten_by_a_scale():
    config = load_config("search_spaces/cifar100.yaml")
    assert config.train.lr_scale == 1.0
    assert config.with_values({"train.lr": 0.5}).train.lr == 0.5


def test_a_baseline_rate_outside_what_a_scale_can_be_is_refused_with_its_key():
    errors = errors_of({"space": SCALE_SPACE, "baselines": [
        {"name": "fast-adam", "train.optimizer": "adam", "train.lr": 9.0, "train.batch_size": 64}]})
    assert errors == ["baselines[0].train.lr: 9.0 is train.lr_scale 6e+04 for adam at batch 64, which is refused "
                      "(Input should be less than or equal to 1000)"]


def test_a_warmup_that_some_trials_cannot_have_is_refused():
    schedules = {"type": "categorical", "choices": ["cosine", "onecycle"]}
    warmup = {"type": "int", "low": 0, "high": 2}
    errors = errors_of({"space": {"train.schedule": schedules, "train.warmup_epochs": warmup}})
    assert errors == ["space.train.warmup_epochs: a onecycle trial could get a warm-up, which it refuses (it rises "
                      "by itself over 30% of its steps); add `when: {train.schedule: [...]}` without onecycle, or "
                      "leave onecycle out of the space"]
    config_from_dict({"space": {"train.schedule": schedules,
                                "train.warmup_epochs": {**warmup, "when": {"train.schedule": "cosine"}}}})
    errors = errors_of({"train": {"epochs": 2}, "space": {"train.warmup_epochs": warmup}})
    assert errors == ["space.train.warmup_epochs: up to 2, but trials may train only 2 epoch(s); a warm-up must end "
                      "before the last epoch (--epochs N shortens it for you)"]


def test_the_logit_relu_is_not_a_search_dimension():
    errors = errors_of({"space": {"model.logit_relu": {"type": "categorical", "choices": [False, True]}}})
    assert errors[0].startswith("space.model.logit_relu: a ReLU on the logits is the CIFAR-100 notebook's bug")


def test_values_that_do_nothing_are_named_with_why():
    from alexnet_exp.config import config_from_dict, dump_config, inactive_paths

    config = config_from_dict({"train": {"optimizer": "adam", "schedule": "onecycle"},
                               "augment": {"crop": True, "crop_size": 28},
                               "space": {"train.schedule": {"type": "categorical", "choices": ["cosine", "onecycle"]},
                                         "train.warmup_epochs": {"type": "int", "low": 0, "high": 2,
                                                                 "when": {"train.schedule": "cosine"}}}})
    inactive = inactive_paths(config)
    assert inactive["train.momentum"] == "sgd only (optimizer adam)" and "train.nesterov" in inactive
    assert inactive["augment.crop_padding"] == "crop_size crops are not padded"
    assert "train.warmup_epochs" in inactive and "data.image_size" in inactive and "train.lr" not in inactive
    sgd = config.with_values({"train.optimizer": "sgd", "train.schedule": "cosine"})
    assert "train.momentum" not in inactive_paths(sgd) and "train.warmup_epochs" not in inactive_paths(sgd)
    text = dump_config(config, sampled={"train.optimizer": "adam"}, inactive=inactive)
    assert text.startswith("# set by the study (sampled, or a baseline's or repeat's values): train.optimizer")
    assert "# inactive: train.momentum (sgd only (optimizer adam))" in text
    assert "\n# inactive" not in dump_config(config)  # a study's own config.yaml: no trial, no header
