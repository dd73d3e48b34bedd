"""The image task: the conditional GAN backbone, LoRA on transposed convs, the federated GAN objective,
FedPer keys, a tiny federated GAN on real CIFAR-10 with its per-client view, and `fedgen fid`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fedgen.cli import main
from fedgen.config import config_from_dict
from fedgen.core.errors import ConfigError
from fedgen.experiment.build import Experiment
from fedgen.experiment.registry import check_config
from fedgen.experiment.run import run_experiment
from fedgen.experiment.rundir import read_state
from fedgen.fl.client import Client, LocalTrainConfig
from fedgen.models import cgan
from fedgen.models.cgan import generator_loss
from fedgen.models.conv_lora import LoraConvTranspose2d, add_generator_lora, load_image_adapter
from fedgen.models.lora import save_adapter
from fedgen.models.params import ParamSet
from fedgen.tasks.base import ClientData
from fedgen.tasks.image.gan import ClassMixtureReference, GanObjective, Images, stratified_labels
from fedgen.tasks.image.task import fedper_gan_personal_keys, generator_blocks

SMALL = cgan.GanConfig(nz=16, ngf=8, ndf=8)


def _noise(n: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, SMALL.nz, generator=g), torch.arange(n) % 10


def _random_images(n: int, seed: int = 0) -> Images:
    g = torch.Generator().manual_seed(seed)
    return Images(torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=g), torch.arange(n) % 10)


# ---------------------------------------------------------------------------------------------- model


def test_paper_width_gan_has_about_15m_parameters_and_a_01m_rank4_adapter():
    gan = cgan.build(cgan.GanConfig(nz=128, ngf=100, ndf=100, norm="bn"), 0)
    assert cgan.count(gan.generator) == 8_204_103 and cgan.count(gan.discriminator) == 7_161_711
    assert 14.5e6 < cgan.count(gan) < 16e6  # 15,365,814 (configs/cifar-paper.yaml)
    adapter = ParamSet(add_generator_lora(gan, r=4, alpha=8), "lora")
    assert adapter.numel() == 104_044  # sum over the 4 transposed convs of in*r*k*k + r*out
    assert all(".generator." in k for k in adapter.params)


def test_generator_output_is_32x32_rgb_in_tanh_range():
    x = cgan.build(SMALL, 0).generator(*_noise())
    assert x.shape == (6, 3, 32, 32) and x.abs().max() <= 1


def test_lora_with_b_zero_leaves_the_generator_output_identical():
    gan = cgan.build(SMALL, 0)
    z, y = _noise()
    before = gan.generator(z, y)
    model = add_generator_lora(gan, r=4, alpha=8)
    assert sum(isinstance(m, LoraConvTranspose2d) for m in model.modules()) == 4
    assert torch.equal(model(z, y), before)


def test_the_merged_transposed_conv_delta_equals_the_adapter_path():
    gan = cgan.build(SMALL, 0)
    model = add_generator_lora(gan, r=2, alpha=4)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    z, y = _noise()
    adapted = model(z, y)
    merged = model.merge_and_unload()
    assert torch.allclose(merged.generator(z, y), adapted, atol=1e-5)
    assert not any(isinstance(m, LoraConvTranspose2d) for m in merged.modules())


def test_lora_refuses_transposed_convs_it_cannot_merge():
    with pytest.raises(ValueError, match="output_padding"):
        LoraConvTranspose2d(nn.ConvTranspose2d(4, 4, 3, 2, 1, output_padding=1), "default", config=None)


def test_adapter_saves_as_a_peft_directory_and_loads_back_with_peft(tmp_path):
    model = add_generator_lora(cgan.build(SMALL, 0), r=2, alpha=4)
    params = ParamSet(model, "lora")
    with torch.no_grad():
        for p in params.params.values():
            p.normal_(0, 0.05)
    z, y = _noise()
    out = model(z, y)
    save_adapter(model, params.state(), tmp_path / "a")
    assert {p.name for p in (tmp_path / "a").iterdir()} == {
        "adapter_model.safetensors",
        "adapter_config.json",
    }
    reloaded = load_image_adapter(cgan.build(SMALL, 0), tmp_path / "a")
    assert torch.equal(reloaded(z, y), out)


def test_gan_checkpoint_round_trip_and_corruption_is_a_clear_error(tmp_path):
    gan = cgan.build(SMALL, 3)
    cgan.save(gan, tmp_path / "g", {"source": "test"})
    again, meta = cgan.load(tmp_path / "g")
    assert meta["architecture"]["ngf"] == 8
    assert all(
        torch.equal(a, b) for a, b in zip(gan.state_dict().values(), again.state_dict().values(), strict=True)
    )
    (tmp_path / "g" / "gan.safetensors").write_bytes(b"garbage")
    with pytest.raises(Exception, match="corrupt"):
        cgan.load(tmp_path / "g")


def test_fedper_personal_keys_are_read_from_the_model_under_spectral_norms_names():
    gan = cgan.build(SMALL, 0)
    keys = ParamSet(gan, "full").keys()  # what FedPer exchanges: the model's own parameter names
    personal = fedper_gan_personal_keys(gan, keys, 1)
    blocks = [("convs.0.", "norms.0."), ("convs.1.", "norms.1."), ("convs.2.", "norms.2."), ("out.",)]
    assert generator_blocks(gan) == [tuple(f"generator.{p}" for p in b) for b in blocks]  # read from G
    assert set(personal) <= set(dict(gan.named_parameters()))
    assert {"generator.out.weight", "generator.out.bias"} <= set(personal)
    for head in ("lin", "embed", "cls"):  # spectral norm renames D's weights
        assert f"discriminator.{head}.parametrizations.weight.original" in personal
    assert not any(k.startswith(("generator.convs.", "discriminator.convs.")) for k in personal)
    two = fedper_gan_personal_keys(gan, keys, 2)
    assert "generator.norms.2.gain.weight" in two and "generator.convs.2.weight" in two
    with pytest.raises(Exception, match="at least one must stay shared"):
        fedper_gan_personal_keys(gan, keys, 4)


# ---------------------------------------------------------------------------------------------- task


def _task(gan, reset: bool) -> GanObjective:
    d0 = {k: v.clone() for k, v in gan.discriminator.state_dict().items()} if reset else None
    return GanObjective(nz=SMALL.nz, num_classes=10, discriminator_init=d0, d_lr=2e-4, betas=(0.5, 0.999))


def test_fedgen_local_training_changes_only_generator_lora_and_resets_the_discriminator():
    gan = cgan.build(SMALL, 0)
    for p in gan.parameters():
        p.requires_grad_(False)
    frozen = {k: v.clone() for k, v in gan.state_dict().items()}
    model = add_generator_lora(gan, r=2, alpha=4)
    params = ParamSet(model, "lora")
    task = _task(gan, reset=True)
    client = Client(task, params, LocalTrainConfig(1, 8, 1e-3, betas=(0.5, 0.999)))
    data = ClientData(0, _random_images(32), _random_images(8, 1))
    init = params.state()
    res = client.fit(init, data, seed=1)
    assert set(res.state) == set(init) and any(not torch.equal(res.state[k], init[k]) for k in init)
    for k, v in gan.generator.state_dict().items():  # the backbone generator never moves
        if "lora_" not in k:
            assert torch.equal(v, frozen[f"generator.{k}".replace(".base_layer", "")]), k
    assert any(
        not torch.equal(v, frozen[f"discriminator.{k}"]) for k, v in gan.discriminator.state_dict().items()
    )
    client.fit(init, data, seed=1)  # the next session starts from the pretrained discriminator again
    assert torch.equal(client.fit(init, data, seed=1).state[next(iter(init))], res.state[next(iter(init))])


def test_a_full_model_session_starts_from_the_pretrained_spectral_norm_vectors():
    gan = cgan.build(SMALL, 0)
    pretrained = {k: v.clone() for k, v in gan.discriminator.named_buffers()}
    assert pretrained and all("parametrizations" in k for k in pretrained)  # u/v: D's only buffers
    task = GanObjective(
        nz=SMALL.nz,
        num_classes=10,
        discriminator_init=None,  # full-model training: D's weights come with the state
        d_lr=2e-4,
        betas=(0.0, 0.999),
        discriminator_buffers=pretrained,
    )
    with torch.no_grad():
        for b in gan.discriminator.buffers():  # as another client's session left them
            b.add_(1.0)
    task.begin_local(gan, dict(gan.named_parameters()), LocalTrainConfig(1, 8, 1e-3))
    for k, b in gan.discriminator.named_buffers():
        assert torch.equal(b, pretrained[k]), k


def test_the_federated_generator_step_is_the_pretraining_loss():
    gan = cgan.build(SMALL, 0)
    task = _task(gan, reset=True)
    batch = _random_images(8)
    d0 = {k: v.clone() for k, v in gan.discriminator.state_dict().items()}
    torch.manual_seed(0)
    ours = task.loss(gan, batch)
    gan.discriminator.load_state_dict(d0)  # (a training forward moves spectral norm's power iteration)
    torch.manual_seed(0)  # the same draws: noise, then the augmentation seed
    z = torch.randn(8, SMALL.nz)
    aug = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,))))
    want = generator_loss(gan.discriminator, gan.generator(z, batch.y), batch.y, aug, task.diffaug, 1.0)
    assert task.diffaug == "color,translation,cutout" and task.ac_weight == 1.0
    assert torch.equal(ours, want)


def test_full_model_training_trains_both_networks():
    gan = cgan.build(SMALL, 0)
    params = ParamSet(gan, "full")
    task = _task(gan, reset=False)
    client = Client(task, params, LocalTrainConfig(1, 8, 1e-3, betas=(0.5, 0.999)))
    init = params.state()
    res = client.fit(init, ClientData(0, _random_images(32), _random_images(8)), seed=0)
    moved = {k.split(".")[0] for k in init if not torch.equal(res.state[k], init[k])}
    assert moved == {"generator", "discriminator"}


def test_stratified_labels_follow_the_class_histogram():
    y = stratified_labels(np.array([3.0, 0, 1, 0, 0, 0, 0, 0, 0, 0]), 8)
    assert y.tolist() == [0, 0, 0, 0, 0, 0, 2, 2]


def test_the_kid_reference_of_a_client_is_the_largest_subset_with_its_class_mix():
    from fedgen.tasks.image.metrics import mixture_subset

    labels = np.repeat(np.arange(3), 20)  # 20 reference images per class
    idx = mixture_subset(labels, np.array([6.0, 3.0, 0.0]))
    assert np.bincount(labels[idx], minlength=3).tolist() == [20, 10, 0] and len(set(idx)) == len(idx)


def test_class_mixture_reference_matches_the_moments_of_the_resampled_set():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), [100, 200, 300])
    feats = rng.normal(size=(600, 4)) + labels[:, None]
    ref = ClassMixtureReference(feats, labels, 3)
    mu, sigma = ref.stats(np.array([100.0, 200, 300]))  # the set's own class mix
    assert np.allclose(mu, feats.mean(0)) and np.allclose(sigma, np.cov(feats, rowvar=False, bias=True))


# ---------------------------------------------------------------------------------------------- real CIFAR-10


def tiny_image_raw(root: Path, cifar_root: Path, **over) -> dict:
    """A real-CIFAR-10 federated GAN small enough for CI."""
    return {
        "name": "tiny-image",
        "task": "image",
        "seed": 0,
        "threads": 2,
        "data": {
            "dir": str(cifar_root),
            "partition": "dirichlet",
            "num_clients": 4,
            "alpha": 0.5,
            "max_examples": 320,
            "public_fraction": 0.01,
        },
        "image": {
            "ngf": 8,
            "ndf": 8,
            "nz": 16,
            "eval_samples": 100,
            "local_samples": 20,
            "fid_samples": 40,
            "fid_reference": 50,
            "kid_subset": 20,
            "classifier_epochs": 1,
            "classifier_train_examples": 2000,
            "grid_clients": 1,
        },
        "lora": {"r": 2, "alpha": 4},
        "pretrain": {"steps": 16, "batch_size": 32, "lr": 0.0002},
        "fl": {"rounds": 2, "fraction": 0.5, "local_epochs": 1, "batch_size": 32, "lr": 0.001},
        "eval": {"local_every": 1},
        "output": {"root": str(root), "keep_checkpoints": 2},
        **over,
    }


@pytest.fixture(scope="module")
def image_root(shared_root) -> Path:
    return shared_root / "image"


@pytest.fixture(scope="module")
def finished_image(image_root, cifar_root) -> tuple[Path, dict]:
    return tiny_image_run(image_root, cifar_root)


def tiny_image_run(image_root: Path, cifar_root: Path) -> tuple[Path, dict]:
    """The tiny federated GAN run (``tiny_image_raw``), made once per session; (run dir, summary)."""
    run = image_root / "fedgen"
    if (run / "summary.json").is_file():
        return run, json.loads((run / "summary.json").read_text())
    return run, run_experiment(config_from_dict(tiny_image_raw(image_root, cifar_root)), run, progress=False)


def test_a_tiny_federated_gan_on_real_cifar10_writes_metrics_grids_and_a_report(finished_image):
    path, s = finished_image
    assert s["task"] == "image" and s["rounds"] == 2 and s["clients_per_round"] == 2
    assert s["adapter_params"] == s["trained_params"] == s["upload_params"]
    assert s["upload_bytes_total"] == 4 * s["bytes_per_upload"]
    for key in ("test_fdc_initial", "test_fdc_final", "local_test_fdc_personalized_mean"):
        assert np.isfinite(s[key]) and s[key] > 0
    g, c = s["fid"]["global"], s["fid"]["clients"]
    assert g["n"] == 40 and c["n"] == 40 and c["samples_per_client"] == 10 and c["models"] == "personalized"
    assert all(np.isfinite(x) for x in (g["fid"], g["kid"], c["fid_all"], c["fid_avg"]))
    report = (path / "report.md").read_text()
    assert "not comparable to Inception FID" in report
    assert (
        json.loads((Path(s["backbone"]["path"]) / "fedgen_gan.json").read_text())["arch"] == "cgan-sn-proj-v1"
    )
    view = s["fid"]["per_client"]  # global vs personalized generator on each client's own class mix
    assert view["models"] == ["global", "personalized"] and view["samples_per_client"] == 10
    assert set(view["clients"]) == {str(k) for k in range(4)}
    for v in view["clients"].values():
        for who in ("global", "personalized"):
            assert 0 <= v[who]["class_acc"] <= 1 and np.isfinite(v[who]["kid"])
    for key in ("class_acc", "kid"):
        assert set(view[key]["personalized"]) == {"mean", "median", "p10", "p90"}
    assert 0 <= view["class_acc_improved_share"] <= 1 and 0 <= view["kid_improved_share"] <= 1
    assert "## Per-client view: global vs personalized generator" in report
    assert set(s["grids"]) == {"global", "client_000"} and "![client_000](samples/client_000.png)" in report
    assert "jpeg" in s["backbone"]["data_source"]
    for png in s["grids"].values():
        assert (path / "samples" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in metrics] == [0, 1, 2] and "local_test_fdc" in metrics[-1]


@pytest.mark.slow  # Inception FID of a copied run: ~25 CPU-s
def test_fedgen_fid_recomputes_a_finished_runs_inception_figures(
    finished_image, image_root, cifar_root, capsys
):
    path, _ = finished_image
    run = image_root / "fid-run"
    if not run.exists():
        import shutil

        shutil.copytree(path, run)
    assert main(["fid", str(run), "--n", "20", "--quiet"]) == 0
    out = capsys.readouterr().out
    fid = json.loads((run / "fid.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert fid["global"]["n"] == 20 and fid["clients"]["samples_per_client"] == 5
    assert summary["fid"] == fid and "per_client" in fid and "N=20" in out
    assert "N=20" in (run / "report.md").read_text()


def test_the_backbone_cache_key_follows_the_recipe_and_a_killed_pretraining_resumes(
    image_root, cifar_root, tmp_path
):
    from fedgen.models.cgan import load
    from fedgen.tasks.image.backbone import gan_config, gan_recipe
    from fedgen.tasks.image.data import splits
    from fedgen.tasks.image.pretrain import pretrain
    from fedgen.tasks.image.task import ImageTask

    raw = tiny_image_raw(tmp_path, cifar_root)
    task = ImageTask(config_from_dict(raw))
    base = task.backbone_path()
    assert base.parent == tmp_path / "backbones"
    for section, key, value in [
        ("image", "norm", "gn"),
        ("image", "ema_decay", 0.99),
        ("pretrain", "steps", 17),
    ]:
        changed = tiny_image_raw(tmp_path, cifar_root)
        changed[section][key] = value
        assert ImageTask(config_from_dict(changed)).backbone_path() != base, key
    data = task.data()
    public, _ = splits(task.cfg, data)
    x, y = data.train_x[public], data.train_y[public]
    pretrain(x, y, gan_config(task.cfg), gan_recipe(task.cfg), base / "pretrain", stop_at=7, progress=False)
    assert (base / "pretrain" / "checkpoint.pt").is_file()  # "killed" after step 7 of 16
    gan, meta = load(task.pretrain(base, progress=False))
    assert meta["steps"] == 16 and not (base / "pretrain").exists()
    whole = pretrain(x, y, gan_config(task.cfg), gan_recipe(task.cfg), progress=False)
    for k, v in whole.ema.module.state_dict().items():
        assert torch.equal(gan.generator.state_dict()[k], v), k


@pytest.mark.slow  # two more tiny GAN runs with FID: ~70 CPU-s
def test_image_resume_after_a_kill_gives_bit_identical_adapters_and_metrics(
    finished_image, image_root, cifar_root
):
    path, s = finished_image
    cfg = config_from_dict(tiny_image_raw(image_root, cifar_root))
    out = image_root / "killed"
    assert "stopped_after_round" in run_experiment(cfg, out, stop_after=1, progress=False)
    resumed = run_experiment(None, out, resume=True, progress=False)
    a, b = read_state(path / "global"), read_state(out / "global")
    assert all(torch.equal(a[k], b[k]) for k in a)
    for key in ("test_fdc_final", "local_test_fdc_personalized_mean"):
        assert resumed[key] == s[key]
    assert resumed["fid"]["global"]["fid"] == s["fid"]["global"]["fid"]


@pytest.mark.parametrize(
    "algorithm", ["fedavg-full", "fedper", "ditto", "local", "central-full", "central-lora"]
)
@pytest.mark.slow  # one tiny GAN run with FID each: 17-29 CPU-s
def test_every_baseline_runs_on_the_image_task(algorithm, image_root, cifar_root):
    raw = tiny_image_raw(image_root, cifar_root)
    raw["algorithm"] = {"name": algorithm}
    raw["fl"]["rounds"] = 1
    raw["image"]["fid_samples"] = 20
    s = run_experiment(config_from_dict(raw), image_root / algorithm, progress=False)
    assert s["algorithm"] == algorithm
    assert ("global" in s["fid"]) == (algorithm not in ("fedper", "local"))
    assert np.isfinite(s["fid"]["clients"]["fid_all"])
    if algorithm == "fedavg-full":
        assert s["upload_params"] == s["trained_params"] == s["backbone"]["params"]


def test_image_partition_keeps_the_public_slice_away_from_clients(finished_image, image_root, cifar_root):
    from fedgen.tasks.image.data import splits

    cfg = config_from_dict(tiny_image_raw(image_root, cifar_root))
    exp = Experiment.build(cfg, progress=False)
    public, pool = splits(cfg, exp.task.cifar)
    assert not set(public.tolist()) & set(pool.tolist()) and len(pool) == 320
    assert sum(len(d.train) + len(d.test) for d in exp.data.values()) == 320


def test_image_config_errors_are_one_line_and_name_the_key(cifar_root, tmp_path):
    with pytest.raises(ConfigError, match="data.partition: the image task supports dirichlet or iid"):
        check_config(config_from_dict({"task": "image"}))
    with pytest.raises(ConfigError, match="image.ngf"):
        check_config(
            config_from_dict({"task": "image", "data": {"partition": "dirichlet"}, "image": {"ngf": 0}})
        )


def test_cli_pretrain_checks_the_task(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("task: text\n")
    assert main(["pretrain", "--config", str(cfg), "--task", "image"]) == 2
    assert "config is for the text task" in capsys.readouterr().err


def test_cli_generates_an_image_grid_from_a_personalized_generator(finished_image, tmp_path, capsys):
    path, _ = finished_image
    out = tmp_path / "grid.png"
    assert main(["generate", "--run", str(path), "--client", "1", "--num", "3", "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG" and "10 classes x 3 samples" in capsys.readouterr().out


def test_cli_data_partition_prints_the_classes_per_client_histogram(image_root, cifar_root, tmp_path, capsys):
    import yaml

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_image_raw(image_root, cifar_root)))
    assert main(["data", "partition", "--config", str(cfg)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["num_examples"] == 320 and sum(summary["classes_per_client_hist"].values()) == 4


@pytest.mark.slow  # the backbone + a local run with FID: ~50 CPU-s
def test_compare_tabulates_image_runs_beside_the_untouched_backbone(image_root, cifar_root, tmp_path):
    from fedgen.commands.compare import compare

    raw = tiny_image_raw(image_root, cifar_root)
    raw["fl"]["rounds"] = 1
    result = compare(config_from_dict(raw), ["local"], [0], tmp_path / "cmp", progress=False)
    assert list(result["table"]) == ["backbone", "local"]
    assert (
        result["table"]["backbone"]["fid_global"]["mean"] > 0
        and result["table"]["local"]["fid_global"] is None
    )
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "FID-all" in md and "N=40" in md and "not comparable to Inception FID" in md
    again = compare(config_from_dict(raw), ["local"], [0], tmp_path / "cmp", progress=False)  # all cached
    assert again["rows"] == result["rows"]
