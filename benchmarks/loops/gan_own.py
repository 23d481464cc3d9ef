"""Small pix2pix-style conditional GAN on 16x16 procedural images (deblur + denoise).

Condition = blurred + noisy version of a clean image; G maps it back (linear output, data in [-1, 1]),
a PatchGAN D scores (condition, image) pairs. Loss: BCE-with-logits adversarial
+ l1_weight * L1 for G. Two Adam optimizers (betas 0.5, 0.999), constant lr then linear decay to 0
from decay_start (pix2pix style; d lr = lr * d_lr_mult), separate GradScalers for G and D under fp16, optional
grad clipping. Metric: val_l1 (min), L1 in [0, 1] pixel units on a fixed val set.

lr regions (lr for both G and D, DEFAULTS otherwise, 4 epochs):
Measured (seed 0 unless noted, 1 CPU thread; untrained G 0.240, the degraded input
itself 0.071, so < 0.071 means G actually restores):
  healthy:   1e-3 .. 5e-3, all of fp32/bf16/fp16 (0.066-0.069 at 1e-3, 0.058-0.062 at
             2e-3..5e-3; spikes < 1.5x; fp16 skips a few steps early while the
             GradScaler finds its scale).  DEFAULTS lr = 2e-3.
  spiky but recovers: 1e-2 .. 3e-2 (GAN, so chaotic: which lr spikes depends on seed and
             precision). Spikes from 2x up to >1000x in the G loss; most runs recover
             with the lr decay to 0.058-0.068 (fp32 1e-2..3e-2, bf16/fp16 2e-2); some
             collapse and only partly recover to 0.10-0.16 (bf16/fp16 at 1e-2 and 3e-2,
             fp32 seed 2 at 1e-2), still far from untrained.
  diverges:  fp32 >= 3.5e-2 (0.455-0.48, G loss grows to 1e4+); fp16 >= 4e-2 (nan/inf
             losses on most steps, 166 of 200 G steps skipped, val_l1 0.537);
             bf16 >= 4e-2..0.1 (0.128 at 4e-2, 0.39 at 0.1).
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

DEFAULTS = {
    "lr": 2e-3,
    "precision": "fp32",
    "epochs": 4,
    "seed": 0,
    "steps_per_epoch": 50,
    "batch_size": 8,
    "d_lr_mult": 1.0,
    "l1_weight": 100.0,
    "beta1": 0.5,
    "decay_start": 0.5,  # pix2pix-style: constant lr, then linear decay to 0 from this fraction of training
    "out_act": "none",  # "none" (linear output, clamped for eval) or "tanh"
    "grad_clip": None,  # None/0 = no clipping (norm still reported)
    "blur_sigma": 1.0,
    "noise_std": 0.05,
    "n_val": 128,
}
METRIC = "val_l1"
MODE = "min"


def make_images(n, size, gen):
    """Random smooth images with a few sharp shapes, values in [0, 1]."""
    base = torch.rand(n, 3, 4, 4, generator=gen)
    img = F.interpolate(base, size=(size, size), mode="bicubic", align_corners=False)
    ys = torch.linspace(0, 1, size).view(1, 1, size, 1)
    xs = torch.linspace(0, 1, size).view(1, 1, 1, size)
    # linear ramp
    a = torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1
    b = torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1
    img = img + 0.3 * (a * xs + b * ys)
    # circles
    for _ in range(2):
        cx = torch.rand(n, 1, 1, 1, generator=gen)
        cy = torch.rand(n, 1, 1, 1, generator=gen)
        r = 0.08 + 0.2 * torch.rand(n, 1, 1, 1, generator=gen)
        mask = (((xs - cx) ** 2 + (ys - cy) ** 2) < r**2).float()
        col = torch.rand(n, 3, 1, 1, generator=gen)
        img = img * (1 - mask) + col * mask
    # rectangles
    for _ in range(2):
        x0 = torch.rand(n, 1, 1, 1, generator=gen) * 0.8
        y0 = torch.rand(n, 1, 1, 1, generator=gen) * 0.8
        w = 0.1 + 0.3 * torch.rand(n, 1, 1, 1, generator=gen)
        h = 0.1 + 0.3 * torch.rand(n, 1, 1, 1, generator=gen)
        mask = ((xs >= x0) & (xs < x0 + w) & (ys >= y0) & (ys < y0 + h)).float()
        col = torch.rand(n, 3, 1, 1, generator=gen)
        img = img * (1 - mask) + col * mask
    img = img + 0.02 * torch.randn(img.shape, generator=gen)
    return img.clamp(0, 1)


def degrade(img, sigma, noise_std, gen):
    """Gaussian blur (separable, 5 taps) + additive noise."""
    xs = torch.arange(5, dtype=torch.float32) - 2
    k1 = torch.exp(-(xs**2) / (2 * sigma**2))
    k1 = k1 / k1.sum()
    k2 = (k1[:, None] * k1[None, :]).expand(3, 1, 5, 5)
    blurred = F.conv2d(F.pad(img, (2, 2, 2, 2), mode="replicate"), k2, groups=3)
    return (blurred + noise_std * torch.randn(img.shape, generator=gen)).clamp(0, 1)


class Conv2d(nn.Conv2d):
    """nn.Conv2d that, under CPU fp16 autocast, runs as im2col + matmul.

    On this CPU torch build the fp16 conv weight-grad kernel is ~100x slower than fp32
    (200 ms for a 32->32 3x3 conv on a 16x16x16 batch), while fp16 matmuls are fast.
    Same math (the matmul runs in fp16 under autocast, like the conv would); fp32/bf16 use
    the native conv. Only zero padding, no dilation/groups.
    """

    def forward(self, x):
        if not (torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.float16):
            return super().forward(x)
        n, c, h, w = x.shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        xp = F.pad(x, (pw, pw, ph, ph)).permute(0, 2, 3, 1)  # n, h, w, c
        cols = torch.cat(
            [xp[:, i : i + sh * ho : sh, j : j + sw * wo : sw, :] for i in range(kh) for j in range(kw)], dim=-1
        )
        wmat = self.weight.permute(0, 2, 3, 1).reshape(self.out_channels, -1)
        return F.linear(cols, wmat, self.bias).permute(0, 3, 1, 2)


class Generator(nn.Module):
    def __init__(self, ch=16, out_act="tanh"):
        super().__init__()
        self.out_act = out_act
        self.e1 = Conv2d(3, ch, 3, 1, 1)
        self.e2 = Conv2d(ch, 2 * ch, 4, 2, 1)
        self.mid = Conv2d(2 * ch, 2 * ch, 3, 1, 1)
        self.up = Conv2d(2 * ch, ch, 3, 1, 1)
        self.out = Conv2d(2 * ch, 3, 3, 1, 1)

    def forward(self, x):
        h1 = F.leaky_relu(self.e1(x), 0.2)
        h2 = F.leaky_relu(self.e2(h1), 0.2)
        h2 = F.leaky_relu(self.mid(h2), 0.2) + h2
        u = F.leaky_relu(self.up(F.interpolate(h2, scale_factor=2, mode="nearest")), 0.2)
        y = self.out(torch.cat([u, h1], 1))
        return torch.tanh(y) if self.out_act == "tanh" else y


class Discriminator(nn.Module):
    """PatchGAN: 16x16 pair -> 4x4 logits."""

    def __init__(self, ch=32):
        super().__init__()
        self.c1 = Conv2d(6, ch, 4, 2, 1)
        self.c2 = Conv2d(ch, 2 * ch, 4, 2, 1)
        self.out = Conv2d(2 * ch, 1, 3, 1, 1)

    def forward(self, cond, img):
        h = F.leaky_relu(self.c1(torch.cat([cond, img], 1)), 0.2)
        h = F.leaky_relu(self.c2(h), 0.2)
        return self.out(h)


def _autocast(precision):
    if precision == "bf16":
        return torch.autocast(device_type="cpu", dtype=torch.bfloat16)
    if precision == "fp16":
        return torch.autocast(device_type="cpu", dtype=torch.float16)
    return torch.autocast(device_type="cpu", enabled=False)


def _backward_step(loss, opt, params, scaler, clip):
    """backward + (unscale, clip, step, update). Returns (grad_norm, scale, skipped)."""
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        gn = torch.nn.utils.clip_grad_norm_(params, clip)
        scale_before = scaler.get_scale()
        scaler.step(opt)
        scaler.update()
        scale = scaler.get_scale()
        return float(gn), float(scale), 1.0 if scale < scale_before else 0.0
    loss.backward()
    gn = torch.nn.utils.clip_grad_norm_(params, clip)
    opt.step()
    return float(gn), 1.0, 0.0


def train(config, on_step, on_epoch):
    cfg = dict(DEFAULTS)
    cfg.update(config or {})
    torch.set_num_threads(1)
    torch.manual_seed(cfg["seed"])
    precision = cfg["precision"]
    bs, spe, epochs = cfg["batch_size"], cfg["steps_per_epoch"], cfg["epochs"]

    gen = torch.Generator().manual_seed(cfg["seed"])
    clean = make_images(bs * spe, 16, gen)
    cond = degrade(clean, cfg["blur_sigma"], cfg["noise_std"], gen)
    val_gen = torch.Generator().manual_seed(12345)  # same val set for every seed
    val_clean = make_images(cfg["n_val"], 16, val_gen)
    val_cond = degrade(val_clean, cfg["blur_sigma"], cfg["noise_std"], val_gen)
    # networks work in [-1, 1]
    clean, cond = clean * 2 - 1, cond * 2 - 1
    val_cond_in = val_cond * 2 - 1
    shuffle_gen = torch.Generator().manual_seed(cfg["seed"] + 1)

    G, D = Generator(out_act=cfg["out_act"]), Discriminator()
    betas = (cfg["beta1"], 0.999)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg["lr"], betas=betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg["lr"] * cfg["d_lr_mult"], betas=betas)
    total = epochs * spe
    start = int(cfg["decay_start"] * total)

    def lr_lambda(s):  # s = number of scheduler steps taken so far
        return 1.0 if s < start else max(0.0, 1.0 - (s - start) / max(1, total - start))

    sched_g = torch.optim.lr_scheduler.LambdaLR(opt_g, lr_lambda)
    sched_d = torch.optim.lr_scheduler.LambdaLR(opt_d, lr_lambda)
    scaler_g = torch.amp.GradScaler("cpu") if precision == "fp16" else None
    scaler_d = torch.amp.GradScaler("cpu") if precision == "fp16" else None
    g_params, d_params = list(G.parameters()), list(D.parameters())
    clip = cfg["grad_clip"] if cfg["grad_clip"] else float("inf")
    bce = nn.BCEWithLogitsLoss()

    step = 0
    for epoch in range(1, epochs + 1):
        G.train()
        D.train()
        perm = torch.randperm(bs * spe, generator=shuffle_gen)
        for i in range(spe):
            idx = perm[i * bs : (i + 1) * bs]
            c, real = cond[idx], clean[idx]

            # --- D step
            opt_d.zero_grad(set_to_none=True)
            with _autocast(precision):
                fake = G(c)
                d_real = D(c, real).float()
                d_fake = D(c, fake.detach()).float()
                loss_d = 0.5 * (bce(d_real, torch.ones_like(d_real)) + bce(d_fake, torch.zeros_like(d_fake)))
            gn_d, scale_d, skip_d = _backward_step(loss_d, opt_d, d_params, scaler_d, clip)

            # --- G step
            opt_g.zero_grad(set_to_none=True)
            with _autocast(precision):
                d_fake = D(c, fake).float()
                adv = bce(d_fake, torch.ones_like(d_fake))
                rec = F.l1_loss(fake.float(), real)
                loss_g = adv + cfg["l1_weight"] * rec
            gn_g, scale_g, skip_g = _backward_step(loss_g, opt_g, g_params, scaler_g, clip)

            sched_g.step()
            sched_d.step()
            step += 1
            f = fake.detach().float()
            on_step(
                step,
                {
                    "loss": loss_g.item(),
                    "d_loss": loss_d.item(),
                    "g_adv": adv.item(),
                    "g_l1": rec.item(),
                    "g/lr": opt_g.param_groups[0]["lr"],
                    "d/lr": opt_d.param_groups[0]["lr"],
                    "g/loss_scale": scale_g,
                    "d/loss_scale": scale_d,
                    "g/skipped": skip_g,
                    "d/skipped": skip_d,
                    "g/grad_norm": gn_g,
                    "d/grad_norm": gn_d,
                    "g/weight_norm_last": G.out.weight.detach().norm().item(),
                    "d/weight_norm_last": D.out.weight.detach().norm().item(),
                    "output_std": f.std().item(),
                    "output_mean": f.mean().item(),
                },
            )

        G.eval()
        with torch.no_grad(), _autocast(precision):
            pred = (G(val_cond_in).float() * 0.5 + 0.5).clamp(0, 1)
        val_l1 = F.l1_loss(pred, val_clean).item()
        on_epoch(
            epoch,
            {
                METRIC: val_l1 if math.isfinite(val_l1) else float("nan"),
                "val_l1_input": F.l1_loss(val_cond, val_clean).item(),
            },
        )
