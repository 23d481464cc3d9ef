"""Colorization loop (grayscale 16x16 -> RGB 16x16), Charbonnier + perceptual, RMSprop + ReduceLROnPlateau.

Procedural data: a smooth scalar field + ramp mapped through a fixed colormap (luminance rises
monotonically along it), plus circles and rectangles coloured from two small palettes (shape tells
the palette), so colour is mostly predictable from gray level + structure. Input = luminance
(0.299 R + 0.587 G + 0.114 B). Model: small conv encoder-decoder (16 -> 8 -> 4 -> 8 -> 16,
Conv-BatchNorm-ReLU blocks, U-Net skips, nearest upsampling), linear output added to the gray
input. Loss: Charbonnier on RGB + perc_weight (0.1) * L1 between features of a small frozen,
randomly initialised conv net (fixed seed PERC_SEED; no pretrained weights), run in fp32.
RMSprop (alpha 0.99, no momentum), ReduceLROnPlateau (mode max, factor 0.5, patience 0) stepped
each epoch on val_psnr; grad clipping (unscale_ first under fp16; the norm is reported before
clipping). Metric: val_psnr (max), outputs clamped to [0, 1], fixed val set for every seed.
Convs run as im2col + matmul under fp16 autocast (see Conv2d: CPU fp16 conv backward is slow).

lr regions (lr = RMSprop lr, DEFAULTS otherwise, 4 epochs x 40 steps, batch 16):
Measured (seeds 0 and 1, 1 CPU thread; untrained (lr=0) 7.87 dB seed 0, 8.96 dB seed 1;
the gray input copied to RGB scores 11.78 dB). "spike" = max loss / first loss.
  healthy:   3e-4 .. 3e-3 (13.86-13.96 dB at 3e-4 fp32; 14.14-14.38 dB at 1e-3, fp32/bf16/fp16,
             both seeds; 14.02-14.26 dB at 3e-3 fp32; spike <= 1.2 up to 1e-3, 3.1-3.9 at 3e-3).
             DEFAULTS lr = 1e-3.
  spiky but recovers: 1e-2 .. 3e-2: spikes ~10-28x, val dips for an epoch, the plateau
             scheduler halves the lr and the run recovers (14.12-14.24 dB at 1e-2: fp32 both
             seeds, bf16/fp16 seed 0; 13.43-13.65 dB at 3e-2 fp32).
  degraded:  0.1 .. 0.3: spikes 50-780x, ends at 11.85-11.97 dB (0.3: all precisions, both seeds;
             0.1: fp32 both seeds, bf16/fp16 seed 0), about the gray-input level: well above
             untrained, well below healthy. fp16 skips 1 step.
  diverges:  1.0 is the edge: seed 1 ends 6.3 dB (fp32/bf16/fp16; below untrained), seed 0 ends
             10.3-10.5 dB (fp32/bf16) and nan under fp16 (overflow: 154 of 160 losses inf/nan,
             156 steps skipped). >= 2 (2, 5, 10, 30 measured): ends at 4.6-7.8 dB (no better
             than untrained), losses grow to 1e4..6e6x the first loss; fp16 (2 and 10) gives
             nan val_psnr (159 of 160 losses inf/nan, 159 steps skipped).
SWEEP_LR = (3e-4, 10), region edges taken between measured lrs: about 27% healthy, 22% spiky,
29% degraded, 22% diverged (34% >= 0.3).
CPU s/run on this AVX2-only CPU (no avx512/amx, so bf16 convs and fp16 matmuls are emulated,
~7-20x slower than fp32): fp32 4.7-5.4 (up to 7 under load), bf16 20-23, fp16 25-29.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

DEFAULTS = {
    "lr": 1e-3,
    "precision": "fp32",
    "epochs": 4,
    "seed": 0,
    "steps_per_epoch": 40,
    "batch_size": 16,
    "channels": 16,
    "grad_clip": 1.0,  # None/0 = no clipping (norm still reported)
    "perc_weight": 0.1,
    "charb_eps": 1e-3,
    "rms_alpha": 0.99,
    "momentum": 0.0,
    "weight_decay": 0.0,
    "plateau_factor": 0.5,
    "plateau_patience": 0,
    "n_val": 128,
}
METRIC = "val_psnr"
MODE = "max"
SWEEP_LR = (3e-4, 10.0)

PERC_SEED = 4321  # the frozen random feature net is the same for every run


# Colours are (mostly) predictable from structure + luminance, so colorization is learnable:
# the smooth background goes through a fixed colormap whose luminance rises monotonically,
# circles take colours from one palette and rectangles from another (distinct luminances
# within each palette; the shape tells which palette).
COLORMAP = torch.tensor(
    [[0.15, 0.00, 0.35], [0.00, 0.40, 0.60], [0.25, 0.70, 0.30], [0.95, 0.80, 0.25], [1.00, 0.95, 0.85]]
)
CIRCLE_PALETTE = torch.tensor([[0.50, 0.15, 0.70], [0.85, 0.15, 0.10], [0.20, 0.80, 0.90], [0.95, 0.85, 0.20]])
RECT_PALETTE = torch.tensor([[0.10, 0.20, 0.90], [0.10, 0.60, 0.20], [1.00, 0.50, 0.00], [0.95, 0.55, 0.75]])


def colormap(t):
    """t in [0, 1], shape (n, 1, h, w) -> (n, 3, h, w), piecewise linear through COLORMAP."""
    k = COLORMAP.shape[0] - 1
    pos = t.clamp(0, 1) * k
    i0 = pos.floor().clamp(max=k - 1).long()
    frac = pos - i0
    c0 = COLORMAP[i0.squeeze(1)].permute(0, 3, 1, 2)
    c1 = COLORMAP[(i0 + 1).squeeze(1)].permute(0, 3, 1, 2)
    return c0 * (1 - frac) + c1 * frac


def make_images(n, size, gen):
    """Colormapped smooth field + ramp, with palette-coloured circles and rectangles; values in [0, 1]."""
    base = torch.rand(n, 1, 4, 4, generator=gen)
    t = F.interpolate(base, size=(size, size), mode="bicubic", align_corners=False)
    ys = torch.linspace(0, 1, size).view(1, 1, size, 1)
    xs = torch.linspace(0, 1, size).view(1, 1, 1, size)
    a = torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1
    b = torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1
    t = t + 0.4 * (a * xs + b * ys)
    img = colormap(t)
    for palette, kind in ((CIRCLE_PALETTE, "circle"), (RECT_PALETTE, "rect")):
        for _ in range(2):
            if kind == "circle":
                cx = torch.rand(n, 1, 1, 1, generator=gen)
                cy = torch.rand(n, 1, 1, 1, generator=gen)
                r = 0.12 + 0.2 * torch.rand(n, 1, 1, 1, generator=gen)
                mask = (((xs - cx) ** 2 + (ys - cy) ** 2) < r**2).float()
            else:
                x0 = torch.rand(n, 1, 1, 1, generator=gen) * 0.8
                y0 = torch.rand(n, 1, 1, 1, generator=gen) * 0.8
                w = 0.2 + 0.3 * torch.rand(n, 1, 1, 1, generator=gen)
                h = 0.2 + 0.3 * torch.rand(n, 1, 1, 1, generator=gen)
                mask = ((xs >= x0) & (xs < x0 + w) & (ys >= y0) & (ys < y0 + h)).float()
            idx = torch.randint(0, palette.shape[0], (n,), generator=gen)
            col = palette[idx].view(n, 3, 1, 1) + 0.05 * torch.randn(n, 3, 1, 1, generator=gen)
            img = img * (1 - mask) + col * mask
    return img.clamp(0, 1)


def to_gray(rgb):
    w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (rgb * w).sum(1, keepdim=True)


class Conv2d(nn.Conv2d):
    """nn.Conv2d that, under CPU fp16 autocast, runs as im2col + matmul.

    On this CPU torch build the fp16 conv weight-grad kernel is ~100x slower than fp32,
    while fp16 matmuls are fast. Same math (the matmul runs in fp16 under autocast, like
    the conv would); fp32/bf16 use the native conv. Only zero padding, no dilation/groups.
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


def conv_bn(cin, cout, stride=1):
    return nn.Sequential(Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class ColorNet(nn.Module):
    """Small conv encoder-decoder (16 -> 8 -> 4 -> 8 -> 16) with BatchNorm and U-Net skips."""

    def __init__(self, ch=16):
        super().__init__()
        self.enc1 = conv_bn(1, ch)
        self.enc2 = conv_bn(ch, 2 * ch, stride=2)
        self.mid = nn.Sequential(conv_bn(2 * ch, 2 * ch, stride=2), conv_bn(2 * ch, 2 * ch))
        self.dec2 = conv_bn(4 * ch, ch)
        self.dec1 = conv_bn(2 * ch, ch)
        self.out = Conv2d(ch, 3, 3, padding=1)

    def forward(self, g):
        e1 = self.enc1(g)  # 16x16
        e2 = self.enc2(e1)  # 8x8
        m = self.mid(e2)  # 4x4
        d2 = self.dec2(torch.cat([F.interpolate(m, scale_factor=2.0, mode="nearest"), e2], 1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, scale_factor=2.0, mode="nearest"), e1], 1))
        return self.out(d1) + g  # predict the colour residual around the gray level


class FeatureNet(nn.Module):
    """Frozen, randomly initialised conv net used as a stand-in 'perceptual' feature extractor."""

    def __init__(self):
        super().__init__()
        self.c1 = Conv2d(3, 16, 3, padding=1)
        self.c2 = Conv2d(16, 32, 3, stride=2, padding=1)
        self.c3 = Conv2d(32, 32, 3, padding=1)

    def forward(self, x):
        f1 = F.relu(self.c1(x))
        f2 = F.relu(self.c2(f1))
        f3 = F.relu(self.c3(f2))
        return [f1, f2, f3]


def charbonnier(pred, target, eps):
    return torch.sqrt((pred - target) ** 2 + eps * eps).mean()


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
    precision = cfg["precision"]
    bs, spe, epochs = cfg["batch_size"], cfg["steps_per_epoch"], cfg["epochs"]

    torch.manual_seed(PERC_SEED)
    feat_net = FeatureNet().eval()
    for p in feat_net.parameters():
        p.requires_grad_(False)

    torch.manual_seed(cfg["seed"])
    gen = torch.Generator().manual_seed(cfg["seed"])
    train_rgb = make_images(bs * spe, 16, gen)
    train_gray = to_gray(train_rgb)
    val_gen = torch.Generator().manual_seed(12345)  # same val set for every seed
    val_rgb = make_images(cfg["n_val"], 16, val_gen)
    val_gray = to_gray(val_rgb)
    shuffle_gen = torch.Generator().manual_seed(cfg["seed"] + 1)

    model = ColorNet(cfg["channels"])
    opt = torch.optim.RMSprop(
        model.parameters(),
        lr=cfg["lr"],
        alpha=cfg["rms_alpha"],
        momentum=cfg["momentum"],
        weight_decay=cfg["weight_decay"],
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="max", factor=cfg["plateau_factor"], patience=cfg["plateau_patience"]
    )
    scaler = torch.amp.GradScaler("cpu") if precision == "fp16" else None
    params = list(model.parameters())
    clip = cfg["grad_clip"] if cfg["grad_clip"] else float("inf")

    def compute_loss(out, y):
        rec = charbonnier(out, y, cfg["charb_eps"])
        # the frozen feature net runs in fp32 (low-precision convs are slow on this CPU)
        with torch.autocast(device_type="cpu", enabled=False):
            fp = feat_net(out.float())
            with torch.no_grad():
                ft = feat_net(y)
        perc = sum(F.l1_loss(a, b) for a, b in zip(fp, ft, strict=True)) / len(fp)
        return rec + cfg["perc_weight"] * perc, rec, perc

    step = 0
    for epoch in range(1, epochs + 1):
        model.train()
        perm = torch.randperm(bs * spe, generator=shuffle_gen)
        for i in range(spe):
            idx = perm[i * bs : (i + 1) * bs]
            x, y = train_gray[idx], train_rgb[idx]
            opt.zero_grad(set_to_none=True)
            with _autocast(precision):
                out = model(x)
                loss, rec, perc = compute_loss(out.float(), y)
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
            step += 1
            o = out.detach().float()
            on_step(
                step,
                {
                    "loss": loss.item(),
                    "charbonnier": rec.item(),
                    "perceptual": perc.item(),
                    "model/lr": opt.param_groups[0]["lr"],
                    "model/loss_scale": float(scale),
                    "model/skipped": skipped,
                    "model/grad_norm": float(gn),
                    "model/weight_norm_last": model.out.weight.detach().norm().item(),
                    "output_std": o.std().item(),
                    "output_mean": o.mean().item(),
                },
            )

        model.eval()
        with torch.no_grad(), _autocast(precision):
            pred = model(val_gray).float()
        val_psnr = psnr(pred, val_rgb)
        # plateau scheduler on the validation metric; a nan metric counts as "no improvement"
        sched.step(val_psnr if math.isfinite(val_psnr) else -float("inf"))
        on_epoch(
            epoch,
            {
                METRIC: val_psnr,
                "val_l1": F.l1_loss(pred.clamp(0, 1), val_rgb).item(),
                "val_psnr_gray": psnr(val_gray.expand(-1, 3, -1, -1), val_rgb),
            },
        )
