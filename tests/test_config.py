"""Config dataclasses: validation on construction, overrides with clear errors, the TOML round trip."""

import dataclasses
from dataclasses import dataclass

import pytest

from minidni.config import ConfigError, TrainConfig, load_toml, new_default, override, param, parse_value, to_toml


@dataclass
class Demo(TrainConfig):
    layers: int = param(3, "number of layers", ge=3, le=6)
    name: str = param("a", "a name", choices=("a", "b"))


def test_defaults_are_valid_and_overrides_are_checked():
    cfg = override(Demo(), {"layers": 5, "lr": 1, "lr_milestones": [10, 20]})
    assert cfg.layers == 5 and cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.lr_milestones == (10, 20)
    assert Demo().layers == 3  # the original is untouched


@pytest.mark.parametrize("values, message", [
    ({"layers": 2}, "layers must be one of 3, 4, 5, 6; got 2"),
    ({"layers": 4.0}, "layers must be an integer; got 4.0"),
    ({"layers": True}, "layers must be an integer; got True"),
    ({"name": "c"}, "name must be one of 'a', 'b'; got 'c'"),
    ({"lr": 0.0}, "lr must be > 0.0"),
    ({"lr": float("nan")}, "lr must be finite"),
    ({"lr_gamma": 2.0}, "lr_gamma must be > 0.0 and <= 1.0"),
    ({"lr_milestones": [20, 10]}, "lr_milestones must be increasing"),
    ({"lr_milestones": [10], "lr_decay_every": 5}, "not both"),
    ({"steps": 0, "epochs": 0}, "nothing to train"),
    ({"layer": 4}, "no setting 'layer'. Did you mean 'layers'?"),
])
def test_bad_values_are_rejected_with_the_rule(values, message):
    with pytest.raises(ConfigError) as err:
        override(Demo(), values, source="test")
    assert message in str(err.value)
    assert str(err.value).startswith("test: ")


def test_unknown_key_lists_the_valid_settings():
    with pytest.raises(ConfigError) as err:
        override(Demo(), {"zzz": 1})
    assert "layers (an integer, one of 3, 4, 5, 6): number of layers" in str(err.value)


def test_toml_round_trip(tmp_path):
    cfg = override(Demo(), {"lr": 3e-5, "lr_milestones": [100, 200], "name": "b", "eval_test": True})
    path = tmp_path / "cfg.toml"
    path.write_text(to_toml(cfg, header="a header"))
    assert override(Demo(), load_toml(path)) == cfg


def test_toml_errors(tmp_path):
    path = tmp_path / "cfg.toml"
    path.write_text("[train]\nlr = 1e-3\n")
    with pytest.raises(ConfigError, match=r"\[train\] is a table"):
        load_toml(path)
    path.write_text("lr = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_toml(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_toml(tmp_path / "missing.toml")


def test_parse_value():
    assert parse_value("3") == 3 and parse_value("1e-3") == 1e-3 and parse_value("true") is True
    assert parse_value("[1, 2]") == [1, 2] and parse_value("numba") == "numba"


def test_new_default_keeps_the_inherited_rule_and_help():
    @dataclasses.dataclass
    class Faster(TrainConfig):
        lr: float = new_default(TrainConfig, "lr", 3e-4)

    lr = {f.name: f for f in dataclasses.fields(Faster)}["lr"]
    base = {f.name: f for f in dataclasses.fields(TrainConfig)}["lr"]
    assert Faster().lr == 3e-4 and TrainConfig().lr == 1e-3
    assert lr.metadata == base.metadata                      # same help, same bound gt=0
    with pytest.raises(ConfigError, match="lr must be > 0.0; got -1.0.*learning rate of Adam"):
        Faster(lr=-1.0)
    with pytest.raises(ConfigError, match="TrainConfig has no setting 'lrr'.*lr_gamma"):
        new_default(TrainConfig, "lrr", 1.0)
