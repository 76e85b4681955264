"""Config loading: YAML + overrides into typed schemas, and the errors a user sees."""
from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest
import yaml

from mmw2s.config import ConfigError, load_config, save_config
from mmw2s.schema import describe


@dataclass
class Split:
    samples: int = 100 
    shards: int = field(default=1, metadata={"help": "number of shards"})


@dataclass
class Cfg:
    out: str
    seed: int = 0
    lr: float = 1e-3
    mode: Literal["greedy", "beam"] = "greedy"
    pretrained: Optional[str] = None
    tags: list[str] = field(default_factory=list)
    web: Split = field(default_factory=Split)


def write(tmp_path, data, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_file_and_overrides_give_typed_values(tmp_path):
    path = write(tmp_path, {"out": "runs/a", "lr": 1, "web": {"samples": 5}})
    cfg = load_config(Cfg, path, ["seed=3", "web.shards=2", "mode=beam", "tags=[a, b]"])
    assert cfg.out == "runs/a" and cfg.seed == 3 and cfg.mode == "beam"
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)  # an int is a fine float
    assert cfg.web == Split(samples=5, shards=2)
    assert cfg.tags == ["a", "b"] and cfg.pretrained is None


def test_override_wins_over_file(tmp_path):
    path = write(tmp_path, {"out": "a", "seed": 1})
    assert load_config(Cfg, path, ["seed=7"]).seed == 7


def test_unknown_key_names_file_key_and_closest_valid_key(tmp_path):
    path = write(tmp_path, {"out": "a", "web": {"sampels": 5}})
    with pytest.raises(ConfigError) as err:
        load_config(Cfg, path)
    msg = str(err.value)
    assert str(path) in msg and "web.sampels" in msg and "did you mean 'samples'" in msg


def test_unknown_override_names_the_command_line(tmp_path):
    path = write(tmp_path, {"out": "a"})
    with pytest.raises(ConfigError) as err:
        load_config(Cfg, path, ["sed=3"])
    assert "command-line override 'sed=3'" in str(err.value)
    assert "did you mean 'seed'" in str(err.value)


def test_wrong_type_names_key_and_expected_type(tmp_path):
    path = write(tmp_path, {"out": "a", "web": {"samples": "many"}})
    with pytest.raises(ConfigError) as err:
        load_config(Cfg, path)
    msg = str(err.value)
    assert "web.samples" in msg and "expects int" in msg and "'many'" in msg and str(path) in msg


@pytest.mark.parametrize("override,expected", [
    ("seed=true", "expects int"),      # a bool is not a number
    ("seed=1.5", "expects int"),
    ("mode=gredy", "did you mean 'greedy'"),
    ("web=3", "expects a mapping"),
])
def test_type_errors(tmp_path, override, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(Cfg, write(tmp_path, {"out": "a"}), [override])


def test_missing_required_value(tmp_path):
    with pytest.raises(ConfigError, match=r"missing required key 'out' \(expected str\)"):
        load_config(Cfg, write(tmp_path, {"seed": 1}))
    # ...unless an override supplies it
    assert load_config(Cfg, write(tmp_path, {"seed": 1}), ["out=x"]).out == "x"


def test_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("out: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Cfg, bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(Cfg, tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        load_config(Cfg, write(tmp_path, {"out": "a"}), ["seed"])


def test_validate_hook_errors_are_config_errors(tmp_path):
    @dataclass
    class Fractions:
        a: float = 0.5
        b: float = 0.4

        def validate(self):
            if self.a + self.b > 1:
                raise ValueError("fractions sum to more than 1")

    with pytest.raises(ConfigError, match="sum to more than 1"):
        load_config(Fractions, write(tmp_path, {"a": 0.9}))


def test_describe_lists_leaf_keys_with_defaults():
    rows = {key: (tp, default, help_) for key, tp, default, help_ in describe(Cfg)}
    assert rows["out"][1] == "(required)"
    assert rows["web.shards"] == ("int", 1, "number of shards")
    assert rows["pretrained"][0] == "str or null"


def test_saved_config_reloads_identically(tmp_path):
    cfg = load_config(Cfg, write(tmp_path, {"out": "a", "tags": ["x"]}), ["web.samples=9"])
    saved = save_config(cfg, tmp_path / "run")
    assert load_config(Cfg, saved) == cfg


def test_yaml_scalars_read_as_users_mean_them(tmp_path):
    @dataclass
    class Precision:
        mixed_precision: Literal["no", "bf16"] = "bf16"
        lr: float = 1e-3
        flag: bool = False

    path = write(tmp_path, {})
    path.write_text("mixed_precision: no\nlr: 2e-3\nflag: true\n")
    cfg = load_config(Precision, path)
    assert cfg == Precision(mixed_precision="no", lr=0.002, flag=True)
    assert load_config(Precision, path, ["lr=5e-4", "mixed_precision=bf16"]).lr == 0.0005
