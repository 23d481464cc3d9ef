"""The GAN trainers' own knobs: adversarial losses, upsamplers, norms, feature weights, config problems."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.helpers import TINY_CONFIGS, run_epochs, tiny_trainer
from trainables import ConfigError, build_config, load_trainer
from trainables.gan import Discriminator, discriminator_loss, generator_loss, gradient_penalty, psnr, ssim
from trainables.precision import AmpNetwork
from trainables.sr_gan import FeatureExtractor, SRGANConfig
from trainables.translation_gan import DemodConv2d, degrade

ADV_LOSSES = ["ragan", "vanilla", "hinge", "wgan-gp"]


def finite(metrics: dict[str, float]) -> bool:
    return all(math.isfinite(v) for v in metrics.values())


def problem_keys(name: str, **values: Any) -> set[str]:
    cls = load_trainer(name)
    with pytest.raises(ConfigError) as info:
        build_config(cls.Config, {**TINY_CONFIGS[name], **values})
    return {key for key, _ in info.value.problems}


@pytest.mark.parametrize("name", ["sr_gan", "translation_gan"])
@pytest.mark.parametrize("adv_loss", ADV_LOSSES)
def test_every_adversarial_loss_trains_an_epoch(name: str, adv_loss: str) -> None:
    trainer = tiny_trainer(name, adv_loss=adv_loss, label_smoothing=0.1, noisy_labels=0.2, d_updates=2)
    metrics = run_epochs(trainer, 1)[0]
    assert finite(metrics), metrics
    assert metrics["train_d_loss"] != 0.0


@pytest.mark.parametrize("precision", ["bf16", "fp16", "fp16-o2"])
def test_gradient_penalty_runs_in_every_precision(precision: str) -> None:
    metrics = run_epochs(tiny_trainer("sr_gan", adv_loss="wgan-gp", precision=precision), 1)[0]
    assert finite(metrics), metrics


@pytest.mark.parametrize("precision", ["fp32", "fp16-o2"])
def test_gradient_penalty_is_float32_and_zero_for_unit_gradient(precision: str) -> None:
    d = Discriminator(3, 4, 16, "linear")
    net = AmpNetwork(d, lambda p: torch.optim.Adam(p), precision, torch.device("cpu"))
    real, fake = torch.rand(4, 3, 16, 16), torch.rand(4, 3, 16, 16)
    penalty = gradient_penalty(net, real, fake)
    assert penalty.dtype == torch.float32 and math.isfinite(float(penalty.detach()))
    linear = torch.nn.Conv2d(3, 1, 1, bias=False)  # D(x) = sum(w . x): gradient norm |w| * 16 per image
    with torch.no_grad():
        linear.weight.fill_(1.0 / (16 * math.sqrt(3)))
    plain = AmpNetwork(torch.nn.Sequential(linear, torch.nn.Flatten()), torch.optim.Adam, "fp32", torch.device("cpu"))
    assert float(gradient_penalty(plain, real, fake).detach()) == pytest.approx(0.0, abs=1e-10)


def test_adversarial_losses_on_known_logits() -> None:
    real, fake = torch.full((4, 1), 2.0), torch.full((4, 1), -2.0)
    assert float(discriminator_loss("hinge", real, fake)) == 0.0
    assert float(discriminator_loss("wgan-gp", real, fake)) == -4.0
    assert float(generator_loss("wgan-gp", fake)) == 2.0
    zeros = torch.zeros(4, 1)
    assert float(discriminator_loss("vanilla", zeros, zeros)) == pytest.approx(math.log(2))
    confident = float(discriminator_loss("vanilla", real, fake))
    assert float(discriminator_loss("vanilla", real, fake, smoothing=0.2)) > confident
    assert float(discriminator_loss("vanilla", real, fake, noisy=1.0)) > 2.0  # every label flipped
    assert float(generator_loss("ragan", fake, real)) > float(generator_loss("ragan", real, fake))
    with pytest.raises(ValueError, match="unknown adversarial loss"):
        discriminator_loss("lsgan", real, fake)


@pytest.mark.parametrize("upsampler", ["nearest_conv", "pixel_shuffle", "transposed"])
@pytest.mark.parametrize("scale", [2, 4])
def test_every_upsampler_and_scale(upsampler: str, scale: int) -> None:
    trainer = tiny_trainer("sr_gan", upsampler=upsampler, scale=scale, kernel_size=3)
    assert finite(run_epochs(trainer, 1)[0])
    lr = trainer.val_inputs[:2]
    assert lr.shape[-1] == 16 // scale
    assert trainer.model(lr).shape == (2, 3, 16, 16)


@pytest.mark.parametrize("norm", ["batch", "instance", "none", "demod"])
@pytest.mark.parametrize("precision", ["fp32", "fp16-o2"])
def test_every_norm(norm: str, precision: str) -> None:
    assert finite(run_epochs(tiny_trainer("translation_gan", norm=norm, precision=precision), 1)[0])


def test_demod_conv_normalises_each_output_channel() -> None:
    conv = DemodConv2d(4, 6, 3, padding=1)
    norms = conv.demodulated_weight().flatten(1).norm(dim=1)
    assert torch.allclose(norms, torch.ones(6), atol=1e-5)
    x = torch.randn(2, 4, 8, 8)
    before = conv(x)
    with torch.no_grad():
        conv.weight.mul_(torch.rand(6, 1, 1, 1) * 10 + 0.1)  # rescaling an output channel changes nothing
    assert torch.allclose(conv(x), before, atol=1e-5)


def test_problems_are_caught() -> None:
    assert "kernel_size" in problem_keys("sr_gan", kernel_size=4)
    assert "kernel_size" in problem_keys("translation_gan", kernel_size=2)
    assert "feature_weights_path" in problem_keys("sr_gan", feature_weights_path="/nonexistent/vgg.pt")
    sr = problem_keys(
        "sr_gan",
        scale=3,
        d_updates=0,
        pixel_weight=-1.0,
        adv_weight=-1.0,
        precision="fp8",
        data_dir="/nonexistent/images",
    )
    assert {"scale", "d_updates", "pixel_weight", "adv_weight", "precision", "data_dir"} <= sr
    assert "image_size" in problem_keys("sr_gan", scale=4, image_size=24)
    translation = problem_keys("translation_gan", depth=4, identity_weight=-1.0, noisy_labels=0.7)
    assert {"image_size", "identity_weight", "noisy_labels"} <= translation


def test_feature_weights_load_from_a_file(tmp_path: Path) -> None:
    reference = FeatureExtractor()
    state = {key: torch.randn_like(value) for key, value in reference.state_dict().items()}
    state["classifier.0.weight"] = torch.randn(4, 4)  # e.g. a whole VGG19: keys beyond the prefix are ignored
    path = tmp_path / "vgg.pt"
    torch.save(state, path)
    loaded = FeatureExtractor(str(path))
    assert all(torch.equal(value, state[key]) for key, value in loaded.state_dict().items())
    assert not torch.equal(loaded.features[0].weight, reference.features[0].weight)
    assert all(not p.requires_grad for p in loaded.parameters())
    trainer = tiny_trainer("sr_gan", feature_weights_path=str(path))
    assert trainer.features is not None
    assert torch.equal(trainer.features.features[7].weight, state["features.7.weight"])
    assert finite(run_epochs(trainer, 1)[0])
    del state["features.7.weight"]
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"lack features\.7\.weight"):
        FeatureExtractor(str(path))


def test_random_feature_extractor_is_the_same_for_every_seed() -> None:
    torch.manual_seed(1)
    first = FeatureExtractor().state_dict()
    torch.manual_seed(2)
    second = FeatureExtractor().state_dict()
    assert all(torch.equal(first[key], second[key]) for key in first)


@pytest.mark.parametrize("name", ["sr_gan", "translation_gan"])
def test_step_hook_gets_the_shared_diagnostic_names(name: str) -> None:
    trainer = tiny_trainer(name)
    seen: list[dict[str, float]] = []
    trainer.on_step = lambda step, metrics: seen.append(metrics)
    trainer.train_epoch()
    assert len(seen) == 2 and trainer.step == 2
    terms = ["loss/pixel", "loss/feature"] if name == "sr_gan" else ["loss/recon", "loss/identity"]
    expected = {"loss", *terms, "loss/adv", "loss/d", "d/real_mean", "d/fake_mean", "output_mean", "output_std"}
    for net in ("g", "d"):
        expected |= {
            f"{net}/{m}" for m in ("loss_scale", "skipped", "grad_norm", "grad_norm_first", "weight_norm_last")
        }
    assert expected <= set(seen[0])


@pytest.mark.parametrize("name", ["sr_gan", "translation_gan"])
def test_sample_grid_has_input_output_and_target_rows(name: str) -> None:
    grid = tiny_trainer(name).sample_grid()
    assert grid.shape == (3, 3 * 18 + 2, 8 * 18 + 2)


def test_quality_metrics() -> None:
    x = torch.rand(2, 3, 16, 16)
    assert torch.allclose(ssim(x, x), torch.ones(2))
    noisy = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    assert bool((ssim(noisy, x) < 0.99).all())
    assert float(psnr(torch.zeros(1, 3, 4, 4), torch.full((1, 3, 4, 4), 0.1))) == pytest.approx(20.0)


def test_degrade_makes_gray_inputs_with_holes() -> None:
    images = torch.rand(8, 3, 16, 16) * 0.9 + 0.1
    out = degrade(images, torch.Generator().manual_seed(0))
    assert torch.equal(out, degrade(images, torch.Generator().manual_seed(0)))
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])
    holes = (out[:, 0] == 0).flatten(1).sum(dim=1)
    assert bool((holes >= 4).all()) and bool((holes <= 3 * 16).all())


def test_sr_config_defaults_are_valid() -> None:
    assert SRGANConfig().problems() == []
    assert load_trainer("translation_gan").Config().problems() == []


def test_gan_modules_import_neither_ray_nor_mlflow() -> None:
    code = (
        "import sys, trainables.sr_gan, trainables.translation_gan;"
        "bad = [m for m in ('ray', 'mlflow', 'optuna') if m in sys.modules];"
        "sys.exit(1 if bad else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
