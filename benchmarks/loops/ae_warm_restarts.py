"""Small convolutional denoising autoencoder, SGD + momentum, CosineAnnealingWarmRestarts.

Procedural 16x16 images (smooth colour fields + sharp shapes), input = image + Gaussian
noise, target = clean image; encoder 16x16 -> 4x4x32 bottleneck, decoder with nearest
upsampling + convs, one full-resolution skip, linear output. MSE loss, SGD(momentum, nesterov) with a per-step
CosineAnnealingWarmRestarts schedule (restart every `restart_epochs` epochs: the lr jumps
back to its max at each restart, so the loss spikes a bit and recovers, by design).
Grad clipping (grad_clip, default 1.0). Metric: val_mse (min) on a fixed val set, outputs clamped to [0, 1].

lr regions (lr = SGD max lr, DEFAULTS otherwise, 4 epochs):
Measured with grad_clip=1.0 (the default), seed 0, 1 CPU thread (untrained 0.135,
constant/mean predictor 0.080, noisy input itself 0.0089):
  healthy:   1e-2 .. 0.1, all of fp32/bf16/fp16 (0.0089 at 0.05, 0.008 at 0.1; only the
             small restart bumps).  DEFAULTS lr = 0.05.
  spiky but recovers: 0.2 .. 0.3, all precisions: loss spikes 5-24x (mostly right after
             the lr jumps back up at a restart) and recovers: 0.008 at 0.2, 0.009-0.019
             at 0.3 (seed 1: 0.009). fp16: 1-2 skipped steps.
             0.5 is the edge: spikes ~45x, ends at 0.036-0.064.
  diverges:  >= 1.0: collapses to the constant predictor (0.080) and stays there (fp16
             at 1.0: spikes 1000x, 7 skipped steps, 0.079).
  Without clipping (grad_clip=None): healthy 1e-2..7e-2, 0.1 blows up at step 2 and
             only crawls back (0.037), 0.2 dead (0.080), >= 0.5 nan.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

DEFAULTS = {
    "lr": 0.05,
    "precision": "fp32",
    "epochs": 4,
    "seed": 0,
    "steps_per_epoch": 50,
    "batch_size": 16,
    "momentum": 0.9,
    "nesterov": True,
    "weight_decay": 1e-4,
    "restart_epochs": 1,  # T_0 of CosineAnnealingWarmRestarts, in epochs (stepped per batch)
    "T_mult": 1,
    "eta_min": 0.0,
    "grad_clip": 1.0,  # None/0 = no clipping (norm still reported)
    "noise_std": 0.1,
    "n_val": 128,
}
METRIC = "val_mse"
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


class DenoisingAE(nn.Module):
    def __init__(self, ch=16):
        super().__init__()
        self.stem = nn.Sequential(Conv2d(3, ch, 3, 1, 1), nn.ReLU())
        self.enc = nn.Sequential(
            Conv2d(ch, 2 * ch, 4, 2, 1),
            nn.ReLU(),  # 8x8
            Conv2d(2 * ch, 2 * ch, 4, 2, 1),
            nn.ReLU(),  # 4x4 bottleneck
        )
        self.dec = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"),
            Conv2d(2 * ch, 2 * ch, 3, 1, 1),
            nn.ReLU(),  # 8x8
            nn.Upsample(scale_factor=2, mode="nearest"),
            Conv2d(2 * ch, ch, 3, 1, 1),
            nn.ReLU(),  # 16x16
        )
        self.last = Conv2d(ch, 3, 3, 1, 1)
        for m in self.modules():  # He init (default init is too small for SGD here)
            if isinstance(m, nn.Conv2d) and m is not self.last:
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x):
        h = self.stem(x)
        return self.last(self.dec(self.enc(h)) + h)  # one full-res skip (U-Net style)


def _autocast(precision):
    if precision == "bf16":
        return torch.autocast(device_type="cpu", dtype=torch.bfloat16)
    if precision == "fp16":
        return torch.autocast(device_type="cpu", dtype=torch.float16)
    return torch.autocast(device_type="cpu", enabled=False)


def train(config, on_step, on_epoch):
    cfg = dict(DEFAULTS)
    cfg.update(config or {})
    torch.set_num_threads(1)
    torch.manual_seed(cfg["seed"])
    precision = cfg["precision"]
    bs, spe, epochs = cfg["batch_size"], cfg["steps_per_epoch"], cfg["epochs"]

    gen = torch.Generator().manual_seed(cfg["seed"])
    clean = make_images(bs * spe, 16, gen)
    val_gen = torch.Generator().manual_seed(12345)  # same val set for every seed
    val_clean = make_images(cfg["n_val"], 16, val_gen)
    val_noisy = val_clean + cfg["noise_std"] * torch.randn(val_clean.shape, generator=val_gen)
    noise_gen = torch.Generator().manual_seed(cfg["seed"] + 2)  # fresh noise every batch
    shuffle_gen = torch.Generator().manual_seed(cfg["seed"] + 1)

    model = DenoisingAE()
    opt = torch.optim.SGD(
        model.parameters(),
        lr=cfg["lr"],
        momentum=cfg["momentum"],
        nesterov=cfg["nesterov"],
        weight_decay=cfg["weight_decay"],
    )
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        opt, T_0=max(1, int(cfg["restart_epochs"] * spe)), T_mult=cfg["T_mult"], eta_min=cfg["eta_min"]
    )
    scaler = torch.amp.GradScaler("cpu") if precision == "fp16" else None
    params = list(model.parameters())
    clip = cfg["grad_clip"] if cfg["grad_clip"] else float("inf")

    step = 0
    for epoch in range(1, epochs + 1):
        model.train()
        perm = torch.randperm(bs * spe, generator=shuffle_gen)
        for i in range(spe):
            y = clean[perm[i * bs : (i + 1) * bs]]
            x = y + cfg["noise_std"] * torch.randn(y.shape, generator=noise_gen)
            opt.zero_grad(set_to_none=True)
            with _autocast(precision):
                out = model(x)
                loss = F.mse_loss(out.float(), y)
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
                    "model/weight_norm_last": model.last.weight.detach().norm().item(),
                    "output_std": o.std().item(),
                    "output_mean": o.mean().item(),
                },
            )

        model.eval()
        with torch.no_grad(), _autocast(precision):
            pred = model(val_noisy).float().clamp(0, 1)
        on_epoch(
            epoch,
            {
                METRIC: F.mse_loss(pred, val_clean).item(),
                "val_mse_input": F.mse_loss(val_noisy.clamp(0, 1), val_clean).item(),
            },
        )
