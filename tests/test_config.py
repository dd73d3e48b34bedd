"""Experiment configuration: paper defaults, strict validation with clear one-line errors, overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedgen import cli
from fedgen.config import Config, apply_overrides, config_from_dict, load_config
from fedgen.core.errors import ConfigError
from fedgen.experiment.registry import check_config
from fedgen.tasks.text.task import TextTask

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------------------- defaults


def test_defaults_load_and_equal_the_paper_settings() -> None:
    cfg = load_config(None)
    assert isinstance(cfg, Config)
    assert cfg.data.num_clients == 100  # K
    assert cfg.fl.fraction == 0.1  # C
    assert cfg.fl.local_epochs == 5  # E
    assert cfg.fl.batch_size == 32  # B
    assert (cfg.model.n_layer, cfg.model.n_embd, cfg.model.n_head) == (6, 768, 12)
    assert cfg.lora.r == 8
    assert cfg.lora.alpha == 16
    assert cfg.lora.targets is None  # the task's default: for text, the paper's q and v
    assert TextTask.lora_targets(cfg) == ["q_proj", "v_proj"]


def test_empty_yaml_file_gives_the_defaults(tmp_path: Path) -> None:
    assert load_config(_write(tmp_path, "")) == load_config(None)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads(path: Path) -> None:
    assert isinstance(load_config(path), Config)


# --------------------------------------------------------------------------------------------------- errors


def test_unknown_key_names_the_dotted_key_and_suggests_the_close_match(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(_write(tmp_path, "fl:\n  roundz: 3\n"))
    msg = str(exc.value)
    assert "fl.roundz" in msg
    assert "'fl.rounds'" in msg


def test_unknown_top_level_section_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"flx.*did you mean 'fl'"):
        load_config(_write(tmp_path, "flx:\n  rounds: 3\n"))


@pytest.mark.parametrize(
    ("yaml_text", "key"),
    [
        ("fl:\n  rounds: ten\n", "fl.rounds"),
        ("fl:\n  rounds: true\n", "fl.rounds"),
        ("fl:\n  rounds: 2.5\n", "fl.rounds"),
        ("data:\n  num_clients: false\n", "data.num_clients"),
        ("fl:\n  lr: fast\n", "fl.lr"),
        ("personalize:\n  enabled: 1\n", "personalize.enabled"),
        ("data:\n  partition: random\n", "data.partition"),
        ("lora:\n  targets: q_proj\n", "lora.targets"),
        ("fl: 5\n", "fl"),
    ],
)
def test_wrong_type_raises_config_error_naming_the_key(tmp_path: Path, yaml_text: str, key: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(_write(tmp_path, yaml_text))
    assert f"config {key}" in str(exc.value)


@pytest.mark.parametrize(
    ("yaml_text", "key"),
    [
        ("fl:\n  fraction: 0\n", "fl.fraction"),
        ("fl:\n  fraction: 1.5\n", "fl.fraction"),
        ("data:\n  alpha: 0\n", "data.alpha"),
        ("data:\n  alpha: -1.0\n", "data.alpha"),
        ("lora:\n  r: 0\n", "lora.r"),
        ("fl:\n  rounds: 0\n", "fl.rounds"),
        ("data:\n  num_clients: 0\n", "data.num_clients"),
    ],
)
def test_out_of_range_raises_config_error_naming_the_key(tmp_path: Path, yaml_text: str, key: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(_write(tmp_path, yaml_text))
    assert f"config {key}" in str(exc.value)


def test_boundary_values_are_accepted() -> None:
    cfg = config_from_dict({"fl": {"fraction": 1.0, "rounds": 1}, "lora": {"r": 1}, "data": {"alpha": 1e-6}})
    assert (cfg.fl.fraction, cfg.fl.rounds, cfg.lora.r, cfg.data.alpha) == (1.0, 1, 1, 1e-6)


def test_n_embd_not_divisible_by_n_head_raises(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="n_head"):
        check_config(load_config(_write(tmp_path, "model:\n  n_embd: 100\n  n_head: 12\n")))


@pytest.mark.parametrize("targets", [["c_attn"], ["q_proj", "c_attn"], []])
def test_lora_targets_outside_q_k_v_raise(targets: list[str]) -> None:
    with pytest.raises(ConfigError, match="lora.targets"):
        check_config(config_from_dict({"lora": {"targets": targets}}))


def test_invalid_yaml_raises_config_error_with_line_number(tmp_path: Path) -> None:
    path = _write(tmp_path, "fl:\n  rounds: 3\n  lr: [1, 2\nmodel:\n  n_layer: 2\n")
    with pytest.raises(ConfigError, match=r"line \d+") as exc:
        load_config(path)
    assert str(path) in str(exc.value)


def test_non_mapping_top_level_raises(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mapping"):
        load_config(_write(tmp_path, "- fl\n- model\n"))


def test_missing_file_raises_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


# ------------------------------------------------------------------------------------------------ overrides


def test_overrides_apply_on_top_of_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "fl:\n  rounds: 10\n  lr: 0.01\n")
    cfg = load_config(path, ["fl.rounds=3", "model.n_layer=2", "data.max_docs=null", "lora.targets=[q_proj]"])
    assert cfg.fl.rounds == 3
    assert cfg.fl.lr == 0.01
    assert cfg.model.n_layer == 2
    assert cfg.data.max_docs is None
    assert cfg.lora.targets == ["q_proj"]


def test_apply_overrides_parses_values_as_yaml_and_does_not_mutate_its_input() -> None:
    raw = {"fl": {"rounds": 10}}
    out = apply_overrides(raw, ["fl.rounds=3", "fl.lr=0.001", "personalize.enabled=false"])
    assert out == {"fl": {"rounds": 3, "lr": 0.001}, "personalize": {"enabled": False}}
    assert raw == {"fl": {"rounds": 10}}


def test_scientific_notation_floats_are_numbers_in_files_and_overrides(tmp_path: Path) -> None:
    assert load_config(_write(tmp_path, "fl:\n  lr: 5e-4\n")).fl.lr == 5e-4
    assert load_config(None, ["fl.lr=1e-3"]).fl.lr == 1e-3


@pytest.mark.parametrize("bad", ["fl.rounds", "fl.rounds 3"])
def test_override_without_equals_sign_raises(bad: str) -> None:
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(None, [bad])


def test_override_through_a_non_section_raises() -> None:
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides({"fl": {"rounds": 3}}, ["fl.rounds.x=1"])


def test_override_of_an_unknown_key_is_validated_like_the_file() -> None:
    with pytest.raises(ConfigError, match="fl.roundz.*'fl.rounds'"):
        load_config(None, ["fl.roundz=3"])


def test_override_with_a_bad_value_is_validated_like_the_file() -> None:
    with pytest.raises(ConfigError, match="config fl.rounds"):
        load_config(None, ["fl.rounds=ten"])


# ------------------------------------------------------------------------------------------------------ CLI


def test_cli_prints_one_error_line_and_returns_2_for_a_bad_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = _write(tmp_path, "fl:\n  roundz: 3\n")
    assert cli.main(["run", "--config", str(bad)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("fedgen: error: config")
    assert "Traceback" not in captured.err + captured.out


# --------------------------------------------------------------------------------------------------- digest


def test_digest_is_stable_for_equal_configs_and_changes_with_any_value() -> None:
    a, b = load_config(None), load_config(None, ["fl.rounds=500"])
    assert a == b
    assert a.digest() == b.digest()
    assert len(a.digest()) == 12
    changed = load_config(None, ["fl.rounds=499"])
    assert changed.digest() != a.digest()
    assert changed.digest("model", "lora") == a.digest("model", "lora")
    assert changed.digest("fl") != a.digest("fl")


def test_a_runs_result_key_ignores_the_settings_of_another_task() -> None:
    img = ["task=image", "data.partition=dirichlet"]
    text, image = load_config(None), load_config(None, img)
    assert load_config(None, ["image.ngf=8"]).result_digest() == text.result_digest()
    assert load_config(None, [*img, "image.ngf=8"]).result_digest() != image.result_digest()
    assert load_config(None, ["fl.rounds=3"]).result_digest() != text.result_digest()


# --------------------------------------------------------------------------------- non-finite numbers (#12.2)


@pytest.mark.parametrize(
    ("yaml_text", "key"),
    [
        ("fl:\n  lr: .nan\n", "fl.lr"),
        ("fl:\n  max_grad_norm: .nan\n", "fl.max_grad_norm"),
        ("data:\n  alpha: .inf\n", "data.alpha"),
        ("fl:\n  weight_decay: -.inf\n", "fl.weight_decay"),
        ("fl:\n  lr: nan\n", "fl.lr"),  # a string that float() reads as NaN
        ("fl:\n  lr: 1e999\n", "fl.lr"),  # a string that float() reads as inf
        ("algorithm:\n  ditto_lambda: .inf\n", "algorithm.ditto_lambda"),  # no upper bound
        ("image:\n  d_lr: .nan\n", "image.d_lr"),  # float | None
    ],
)
def test_non_finite_numbers_raise_one_config_error_line_naming_the_key(
    tmp_path: Path, yaml_text: str, key: str
) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(_write(tmp_path, yaml_text))
    msg = str(exc.value)
    assert msg.startswith(f"config {key}: expected a finite number"), msg
    assert "\n" not in msg


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", ".nan", ".inf"])
def test_non_finite_override_is_rejected(value: str) -> None:
    with pytest.raises(ConfigError, match="config fl.lr: expected a finite number"):
        load_config(None, [f"fl.lr={value}"])


def test_an_int_too_large_for_a_float_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="config fl.lr: expected a number"):
        config_from_dict({"fl": {"lr": 10**400}})


def test_an_int_too_long_to_print_still_gives_one_config_error_line() -> None:
    with pytest.raises(ConfigError, match="config seed: must be <=") as exc:
        config_from_dict({"seed": 10**5000})
    assert len(str(exc.value)) < 200


# ----------------------------------------------------------------------------- malformed overrides (#12.3)


@pytest.mark.parametrize(
    "bad",
    [
        "fl.lr=[",
        "fl.lr={",
        "fl.lr='",
        "fl.lr=a: b: c",
        "fl.lr=@x",
        "name=2020-13-45",
        "fl.lr=!!float",
        "fl.rounds=!!int",
        "personalize.enabled=!!bool",
    ],
)
def test_override_value_that_is_not_yaml_is_one_config_error_line(bad: str) -> None:
    with pytest.raises(ConfigError, match="value is not valid YAML") as exc:
        load_config(None, [bad])
    msg = str(exc.value)
    assert msg.startswith(f"config override {bad!r}")
    assert "\n" not in msg


@pytest.mark.parametrize("bad", ["=3", "fl.=3", "a..b=1", ".fl.rounds=3", " . =3"])
def test_override_with_an_empty_key_part_is_rejected(bad: str) -> None:
    with pytest.raises(ConfigError, match="dotted KEY") as exc:
        apply_overrides({}, [bad])
    assert "\n" not in str(exc.value)


def test_cli_prints_one_error_line_for_a_malformed_set_value(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", "--set", "fl.lr=["]) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("fedgen: error: config override")
    assert "Traceback" not in captured.err + captured.out


def test_overrides_do_not_write_through_yaml_aliases(tmp_path: Path) -> None:
    path = _write(tmp_path, "eval: &shared {batch_size: 8}\npretrain: *shared\n")
    cfg = load_config(path, ["eval.batch_size=16"])
    assert (cfg.eval.batch_size, cfg.pretrain.batch_size) == (16, 8)


@pytest.mark.parametrize(
    "text",
    [
        "name: 2020-01-01\n",  # a date: not JSON-serializable
        "name: !!binary aGVsbG8=\n",  # bytes
        "lora:\n  targets: !!set {q_proj: null}\n",  # a set
        "name: 2020-13-45\n",  # looks like a date, is not one: PyYAML raises ValueError
        "fl:\n  lr: !!float\n",  # PyYAML raises IndexError
        "personalize:\n  enabled: !!bool\n",  # PyYAML raises KeyError
    ],
)
def test_unusual_yaml_values_in_a_file_give_a_config_error(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError):
        load_config(_write(tmp_path, text))


def test_a_config_file_that_is_not_utf8_gives_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_bytes(b"fl:\n  rounds: \xff\xfe\n")
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(path)


def test_device_is_auto_cpu_or_cuda_and_cuda_needs_a_gpu() -> None:
    import torch

    assert load_config(None).device == "auto"
    assert config_from_dict({"device": "cpu"}).device == "cpu"
    with pytest.raises(ConfigError, match="config device"):
        config_from_dict({"device": "tpu"})
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="cuda asked for"):
            config_from_dict({"device": "cuda"})
