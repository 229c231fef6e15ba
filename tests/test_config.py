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
    with pytest.raises(Exception):
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
