"""Training config: defaults, overrides, unknown keys and wrong types name the dotted key."""
from __future__ import annotations

import pytest
import yaml

from noisyfr.cli import main as cli_main
from noisyfr.errors import NoisyFRError
from noisyfr.train import load_config
from noisyfr.train.config import SCHEMA, dump_config, parse_override

BASE = {"data": {"train": "synthetic:ids=4,per_id=4,size=32,seed=0", "image_size": 32},
        "model": {"backbone": "small_cnn", "embedding_dim": 16}}


def test_defaults_are_filled_for_every_schema_key():
    cfg = load_config(BASE)
    for section, spec in SCHEMA.items():
        if isinstance(spec, dict):
            assert set(spec) <= set(cfg[section]), section
        else:
            assert section in cfg
    assert cfg["optim"]["lr"] == 0.1 and cfg["optim"]["schedule"] == "cosine"
    assert cfg["loss"]["name"] == "arcface"
    assert cfg["track"]["angles"] is True and cfg["resume"] is False
    assert cfg["track"]["angles_every"] == 1 and cfg["track"]["angles_fraction"] == 1.0
    assert cfg["name"] == "run" and cfg["output_dir"].endswith("run")
    assert cfg["data"]["val"] == [] and cfg["data"]["center_crop"] == 1.0


def test_name_and_output_dir_default_from_the_file_stem(tmp_path):
    path = tmp_path / "my_exp.yaml"
    path.write_text(yaml.safe_dump(BASE))
    cfg = load_config(path)
    assert cfg["name"] == "my_exp"
    assert cfg["output_dir"].replace("\\", "/") == "runs/my_exp"


def test_resolved_config_round_trips_through_yaml():
    cfg = load_config(BASE, ["loss.name=cosface", "loss.m=0.3", "data.val=[a.txt, b.bin]"])
    again = load_config(yaml.safe_load(dump_config(cfg)))
    assert again == cfg


@pytest.mark.parametrize("override, key, value", [
    ("optim.lr=0.05", ("optim", "lr"), 0.05),
    ("optim.epochs=3", ("optim", "epochs"), 3),
    ("optim.weight_decay=5e-4", ("optim", "weight_decay"), 5e-4),   # YAML 1.1 reads this as a str
    ("data.val=[x/pairs.txt, y.bin]", ("data", "val"), ["x/pairs.txt", "y.bin"]),
    ("data.val=one.txt", ("data", "val"), ["one.txt"]),
    ("track.angles=false", ("track", "angles"), False),
    ("track.angles_every=5", ("track", "angles_every"), 5),
    ("track.angles_fraction=0.1", ("track", "angles_fraction"), 0.1),
    ("track.angles_fraction=1", ("track", "angles_fraction"), 1.0),
    ("loss.s=30", ("loss", "s"), 30),
    ("optim.lr_steps=[1, 2]", ("optim", "lr_steps"), [1.0, 2.0]),
])
def test_dotted_overrides(override, key, value):
    cfg = load_config(BASE, [override])
    assert cfg[key[0]][key[1]] == value


def test_override_beats_file_value_and_pairs_are_accepted():
    cfg = load_config({**BASE, "optim": {"lr": 0.3}}, [("optim.lr", 0.01)])
    assert cfg["optim"]["lr"] == 0.01


@pytest.mark.parametrize("override, needle", [
    ("optim.lrr=0.1", "config key 'optim.lrr': unknown key (did you mean 'optim.lr'?)"),
    ("optimizer.lr=0.1", "config key 'optimizer': unknown key"),
    ("data.trian=x", "config key 'data.trian': unknown key"),
    ("optim.batch_size=abc", "config key 'optim.batch_size': expected an integer"),
    ("optim.batch_size=true", "config key 'optim.batch_size': expected an integer"),
    ("optim.batch_size=1", "config key 'optim.batch_size': must be in [2, 65536], got 1"),
    ("optim.lr=-1", "config key 'optim.lr': must be > 0"),
    ("optim.lr=fast", "config key 'optim.lr': expected a number"),
    ("optim.schedule=linear", "config key 'optim.schedule': expected one of"),
    ("optim.amp=fp8", "config key 'optim.amp'"),
    ("device=tpu", "config key 'device'"),
    ("resume=yes please", "config key 'resume': expected true or false"),
    ("data.center_crop=1.5", "config key 'data.center_crop': must be in (0, 1], got 1.5"),
    ("data.val=[1, 2]", "config key 'data.val[0]'"),
    ("model.dropout=1.0", "config key 'model.dropout'"),
    ("data.image_size=40", "config key 'data.image_size'"),        # small_cnn: multiples of 16
    ("model.backbone=resnet9000", "config key 'model.backbone'"),
    ("optim=3", "config key 'optim': expected a mapping"),
    ("optim.schedule=step", "config key 'optim.lr_steps'"),        # step schedule needs epochs
    ("optim.warmup_epochs=30", "config key 'optim.warmup_epochs': must be < optim.epochs"),
    ("track.angles_every=0", "config key 'track.angles_every': must be >= 1, got 0"),
    ("track.angles_every=2.5", "config key 'track.angles_every': expected an integer"),
    ("track.angles_fraction=0", "config key 'track.angles_fraction': must be in (0, 1], got 0"),
    ("track.angles_fraction=1.5", "config key 'track.angles_fraction': must be in (0, 1], got 1.5"),
    ("track.angles_fraction=half", "config key 'track.angles_fraction': expected a number"),
    ("track.angles_fraction=true", "config key 'track.angles_fraction': expected a number"),
])
def test_bad_values_name_the_key(override, needle):
    with pytest.raises(NoisyFRError) as info:
        load_config(BASE, [override])
    msg = str(info.value)
    assert needle in msg
    assert "\n" not in msg


def test_missing_required_key():
    with pytest.raises(NoisyFRError, match="config key 'data.train': required"):
        load_config({"model": {"backbone": "small_cnn"}})


def test_loss_parameters_are_checked_by_build_loss():
    assert load_config(BASE, ["loss.name=cosface", "loss.m=0.2"])["loss"] == {"name": "cosface", "m": 0.2,
                                                                           "sample_rate": None}
    with pytest.raises(NoisyFRError, match="config key 'loss'.*mm"):
        load_config(BASE, ["loss.mm=0.2"])
    with pytest.raises(NoisyFRError, match="config key 'loss'.*nosuchloss"):
        load_config(BASE, ["loss.name=nosuchloss"])
    with pytest.raises(NoisyFRError, match="config key 'loss'.*s"):
        load_config(BASE, ["loss.s=-3"])


@pytest.mark.parametrize("text", ["optim.lr", "=3", "optim..lr=1", "optim.lr=[1, 2"])
def test_malformed_overrides(text):
    with pytest.raises(NoisyFRError, match="override"):
        parse_override(text)


def test_bad_files(tmp_path):
    with pytest.raises(NoisyFRError, match="no such file"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(NoisyFRError, match="invalid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(NoisyFRError, match="mapping at the top level"):
        load_config(listy)


NON_FINITE = ["nan", "NaN", "NAN", ".nan", ".NaN", "inf", "-inf", "+inf", ".inf", "-.Inf", "Infinity",
              "-Infinity", "1e999", "-1e999", "'nan'", "' inf '"]


@pytest.mark.parametrize("spelling", NON_FINITE)
def test_non_finite_numbers_are_refused_in_every_spelling(spelling, tmp_path):
    # as an override (parsed as YAML: strings, YAML floats, overflowing literals) ...
    with pytest.raises(NoisyFRError) as info:
        load_config(BASE, [f"optim.momentum={spelling}"])
    assert "config key 'optim.momentum': expected a finite number" in str(info.value)
    # ... and in the file itself
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(BASE) + f"optim: {{lr: {spelling}}}\n")
    with pytest.raises(NoisyFRError, match=r"config key 'optim.lr': expected a finite number"):
        load_config(path)


@pytest.mark.parametrize("override", ["seed=nan", "seed=1e3", "seed=3.0", "optim.epochs=.inf",
                                      "optim.epochs='2.5'", "seed=99999999999999999999999"])
def test_integer_keys_take_integers_only(override):
    with pytest.raises(NoisyFRError) as info:
        load_config(BASE, [override])
    key = override.split("=")[0]
    assert f"config key '{key}': " in str(info.value)
    assert "expected an integer" in str(info.value) or "must be in [0, " in str(info.value)


def test_numeric_strings_still_work():
    # YAML 1.1 reads 5e-4 as a string: it is still a number, and an integer string an integer
    cfg = load_config(BASE, ["optim.weight_decay=5e-4", "optim.lr='0.05'", "seed='7'"])
    assert cfg["optim"]["weight_decay"] == 5e-4 and cfg["optim"]["lr"] == 0.05 and cfg["seed"] == 7


def test_cli_print_config_refuses_nan_momentum(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(BASE))
    assert cli_main(["train", str(path), "optim.momentum=NaN", "--print-config"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "noisyfr train: error: config key 'optim.momentum': expected a finite number, got 'NaN'\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


def _alias_bomb(key: str, levels: int = 12) -> str:
    lines = [f"{key}:", '  a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"  # 9**12 = 282 billion strings when expanded


@pytest.mark.parametrize("key", ["name", "data", "loss", "grid", "optim"])
def test_yaml_alias_bomb_under_any_key_is_refused_at_once(key, tmp_path, capsys):
    import resource
    import time

    path = tmp_path / "bomb.yaml"
    path.write_text(yaml.safe_dump(BASE) + _alias_bomb(key))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with pytest.raises(NoisyFRError) as info:
        load_config(path)
    assert time.perf_counter() - t0 < 2.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB
    msg = str(info.value)
    assert msg.startswith(f"config {path}: invalid YAML") and "aliases" in msg and "\n" not in msg
    for command in (["train", str(path), "--print-config"], ["sweep", str(path), "--dry-run"]):
        assert cli_main(command) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and str(path) in err and "aliases" in err


def test_yaml_nested_too_deeply_is_one_line(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("name: " + "[" * 20000 + "]" * 20000 + "\n")
    with pytest.raises(NoisyFRError, match=r"deep\.yaml: invalid YAML \(nested too deeply\)"):
        load_config(path)
    with pytest.raises(NoisyFRError) as info:
        load_config(BASE, ["model.width=" + "[" * 20000 + "]" * 20000])
    assert "nested too deeply" in str(info.value) and len(str(info.value)) < 200


def test_cli_print_config_and_exit_status(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(BASE))
    assert cli_main(["train", str(path), "optim.lr=0.02", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["optim"]["lr"] == 0.02 and printed["name"] == "c"
    assert cli_main(["train", str(path), "optim.lrr=0.02"]) == 2
    err = capsys.readouterr().err
    assert "noisyfr train: error: config key 'optim.lrr': unknown key" in err
    assert not (tmp_path / "runs").exists()


def test_plugins_are_imported_before_the_loss_is_checked(tmp_path):
    from noisyfr.losses import LOSSES

    plugin = tmp_path / "extra_losses.py"
    plugin.write_text("import torch\nfrom noisyfr.losses import MarginLoss, register_loss\n\n\n"
                      "@register_loss('plugin_cfg_loss')\nclass L(MarginLoss):\n"
                      "    def target_logit(self, theta, norms=None):\n        return torch.cos(theta)\n")
    base = {"data": {"train": "synthetic:ids=4,per_id=4,size=32"}, "loss": {"name": "plugin_cfg_loss"}}
    with pytest.raises(NoisyFRError, match="unknown loss 'plugin_cfg_loss'"):
        load_config(base)
    try:
        cfg = load_config({**base, "plugins": [str(plugin)]})
        assert cfg["loss"]["name"] == "plugin_cfg_loss" and "plugin_cfg_loss" in LOSSES
        load_config({**base, "plugins": [str(plugin)]})  # a second import is a no-op
    finally:
        LOSSES.pop("plugin_cfg_loss", None)
    with pytest.raises(NoisyFRError, match=r"config key 'plugins\[0\]': plugin file .*nope.py does not exist"):
        load_config({**base, "plugins": [str(tmp_path / "nope.py")]})
    with pytest.raises(NoisyFRError, match=r"config key 'plugins\[0\]': cannot import 'no_such_mod_xyz'"):
        load_config({**base, "plugins": ["no_such_mod_xyz"]})
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(NoisyFRError, match=r"plugins\[0\].*failed to import \(RuntimeError: boom\)"):
        load_config({**base, "plugins": [str(broken)]})
