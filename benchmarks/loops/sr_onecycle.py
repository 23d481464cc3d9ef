"""2x super-resolution loop (16x16 -> 32x32), L1 loss, Adam + OneCycleLR.

Procedural data: smooth colour fields + sharp circles/rectangles + ramps, LR input
made by 2x2 average pooling. Model: a few 3x3 convs (LeakyReLU, one residual) +
PixelShuffle(2), no normalisation, no bilinear skip. Grad clipping (unscale_ first
under fp16). Metric: val_psnr (max), outputs clamped to [0, 1].
Convs run as im2col + matmul under fp16 autocast (see Conv2d: CPU fp16 conv backward
is ~100x slower than fp32 in this torch build).

lr regions (lr = OneCycle max_lr, DEFAULTS otherwise, 4 epochs):
Measured (seed 0, 1 CPU thread; untrained 5.7 dB, bilinear upsampling 24.0 dB):
  healthy:   1e-3 .. 1.5e-2, all of fp32/bf16/fp16 (20.8 dB at 1e-3, 22.9 at 5e-3,
             23.6-23.7 at 1e-2..1.5e-2; no spikes > 2x).  DEFAULTS lr = 5e-3.
  spiky but recovers: 2e-2 .. 2.5e-2, all precisions: loss spikes 13-650x in the
             high-lr part of the cycle, recovers as OneCycle anneals (22.1-22.6 dB at
             2e-2 [fp32/bf16/fp16 and seed 1], 20.4 dB at 2.5e-2). fp16: a few skipped steps.
             3e-2 is the edge: spikes 200-1000x, ends at 17.6-19.7 dB (only partly recovers).
  diverges:  >= 5e-2: ends at 11-13 dB at 5e-2, and at <= 5.5 dB (no better than
             untrained) for >= 0.1; fp16 at 0.1 gives inf/nan losses (12 of 200) and
             skipped steps, fp32/bf16 losses grow to 1e0..1e5.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

DEFAULTS = {
    "lr": 5e-3,
    "precision": "fp32",
    "epochs": 4,
    "seed": 0,
    "steps_per_epoch": 50,
    "batch_size": 16,
    "channels": 32,
    "n_blocks": 3,
    "grad_clip": 1.0,
    "pct_start": 0.3,
    "weight_decay": 0.0,
    "n_val": 128,
}
METRIC = "val_psnr"
MODE = "max"


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


class SRNet(nn.Module):
    def __init__(self, ch=32, n_blocks=3, scale=2):
        super().__init__()
        self.head = Conv2d(3, ch, 3, padding=1)
        body = []
        for _ in range(n_blocks):
            body += [Conv2d(ch, ch, 3, padding=1), nn.LeakyReLU(0.1)]
        self.body = nn.Sequential(*body)
        self.tail = Conv2d(ch, 3 * scale * scale, 3, padding=1)
        self.shuffle = nn.PixelShuffle(scale)
        self.scale = scale

    def forward(self, x):
        h = F.leaky_relu(self.head(x), 0.1)
        h = self.body(h) + h
        return self.shuffle(self.tail(h))


def _autocast(precision):
    if precision == "bf16":
        return torch.autocast(device_type="cpu", dtype=torch.bfloat16)
    if precision == "fp16":
        return torch.autocast(device_type="cpu", dtype=torch.float16)
    return torch.autocast(device_type="cpu", enabled=False)


def psnr(pred, target):
    mse = F.mse_loss(pred.clamp(0, 1), target).item()
    if not math.isfinite(mse):
        return float("nan")
    return 10.0 * math.log10(1.0 / max(mse, 1e-10))


def train(config, on_step, on_epoch):
    cfg = dict(DEFAULTS)
    cfg.update(config or {})
    torch.set_num_threads(1)
    torch.manual_seed(cfg["seed"])
    precision = cfg["precision"]
    bs, spe, epochs = cfg["batch_size"], cfg["steps_per_epoch"], cfg["epochs"]

    gen = torch.Generator().manual_seed(cfg["seed"])
    train_hr = make_images(bs * spe, 32, gen)
    train_lr = F.avg_pool2d(train_hr, 2)
    val_gen = torch.Generator().manual_seed(12345)  # same val set for every seed
    val_hr = make_images(cfg["n_val"], 32, val_gen)
    val_lr = F.avg_pool2d(val_hr, 2)
    shuffle_gen = torch.Generator().manual_seed(cfg["seed"] + 1)

    model = SRNet(cfg["channels"], cfg["n_blocks"])
    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg["lr"], total_steps=epochs * spe, pct_start=cfg["pct_start"]
    )
    scaler = torch.amp.GradScaler("cpu") if precision == "fp16" else None
    params = [p for p in model.parameters()]
    clip = cfg["grad_clip"] if cfg["grad_clip"] else float("inf")

    step = 0
    for epoch in range(1, epochs + 1):
        model.train()
        perm = torch.randperm(bs * spe, generator=shuffle_gen)
        for i in range(spe):
            idx = perm[i * bs : (i + 1) * bs]
            x, y = train_lr[idx], train_hr[idx]
            opt.zero_grad(set_to_none=True)
            with _autocast(precision):
                out = model(x)
                loss = F.l1_loss(out.float(), y)
            skipped = 0.0
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
                gn = torch.nn.utils.clip_grad_norm_(params, clip)
                scale_before = scaler.get_scale()
                scaler.step(opt)
                scaler.update()
                scale = scaler.get_scale()
                skipped = 1.0 if scale < scale_before else 0.0
            else:
                loss.backward()
                gn = torch.nn.utils.clip_grad_norm_(params, clip)
                opt.step()
                scale = 1.0
            sched.step()
            step += 1
            o = out.detach().float()
            on_step(
                step,
                {
                    "loss": loss.item(),
                    "model/lr": opt.param_groups[0]["lr"],
                    "model/loss_scale": float(scale),
                    "model/skipped": skipped,
                    "model/grad_norm": float(gn),
                    "model/weight_norm_last": model.tail.weight.detach().norm().item(),
                    "output_std": o.std().item(),
                    "output_mean": o.mean().item(),
                },
            )

        model.eval()
        with torch.no_grad(), _autocast(precision):
            pred = model(val_lr).float()
        val_l1 = F.l1_loss(pred, val_hr).item()
        on_epoch(epoch, {METRIC: psnr(pred, val_hr), "val_l1": val_l1})
