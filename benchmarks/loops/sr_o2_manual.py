"""x2 super-resolution loop (16x16 -> 32x32 RGB), L1, Adam + linear warm-up / cosine decay,
with a hand-written apex-O2-style fp16 mode (fp16 model, fp32 master weights, own loss scaler).

Procedural data: 32 px images made of a smooth random colour field, sharp-edged circles and
rectangles, a thin line and a sinusoidal grating patch; the 16 px input is the 2x2 area average
(avg_pool2d) of the 32 px target. Model: conv head -> residual blocks (conv-ReLU-conv, no norm)
-> conv to 12 channels -> PixelShuffle(2); no skip from an interpolated input, so the net
learns the whole upsampling (the untrained net scores ~6 dB). Loss: L1 (computed in fp32). Adam;
lr is linearly warmed up over the first warmup_frac of all steps to the peak (config "lr"),
then cosine-decays to final_lr_frac * peak. The scheduler steps every step, skipped or not. Optional grad clipping
by global norm (model/grad_norm is reported before clipping). Metric: val_psnr (max), outputs
clamped to [0, 1], a fixed val set for every seed.

Precision:
  fp32  plain.
  bf16  torch.autocast("cpu", bfloat16) around the forward; loss in fp32.
  fp16  by hand, apex O2 style (NOT torch.amp / GradScaler): the model itself is cast to
        float16 (weights, activations), an fp32 master copy of every weight is what Adam steps,
        and a hand-written dynamic loss scaler: start 2**16; on any non-finite gradient the step
        is skipped and the scale halved, but never below min_loss_scale (128); after
        scale_window clean steps in a row the scale doubles. After each real step the master
        weights are copied back into the fp16 model. fp16 convs run as im2col + matmul (see
        Conv2d: the CPU fp16 conv backward kernel is ~100x slower than fp32 here (283 vs 2.5 ms)).

lr = 0 leaves the weights at their initial values (the untrained model; under fp16 the
fp16-rounded init).

lr regions (lr = peak lr, DEFAULTS otherwise: 4 epochs x 40 steps, batch 16, clip 1.0,
warm-up to the peak over steps 1-40, cosine decay over steps 41-160).
Measured (seeds 0 and 1, 1 CPU thread; untrained (lr=0) 6.16-6.17 dB seed 0, 6.74 dB seed 1, all
precisions; bilinear upsampling of the input scores 21.03 dB on the val set).
"jump" = max over steps of loss / lowest earlier loss; "skips" = fp16 steps skipped on overflow.
  healthy:   3e-3 .. 3e-2 (20.27-20.33 dB at 3e-3: fp32/bf16/fp16 seed 0, fp32 seed 1;
             21.22-21.30 dB at 1e-2: all precisions, both seeds; 20.98-21.25 dB at 3e-2: fp32 both
             seeds, bf16/fp16 seed 0). jump <= 1.7, fp16 skips <= 1 (the first steps at 2**16).
             1e-3 is under-trained (18.23 dB fp32 seed 0). DEFAULTS lr = 1e-2.
  spiky but recovers: 5e-2 .. 7e-2: loss jumps 1.4-3.0x before/around the peak lr, val_psnr lags
             after epoch 1 (13.1-16.9 dB vs 17.7-17.9 at 1e-2; one dip 16.66 -> 16.40 dB at 5e-2
             fp32 seed 1), fp16 skips 1-2 steps (scale down to 16384-65536), then the cosine decay
             brings it back: ends 20.36-21.33 dB (5e-2: fp32 both seeds, fp16 both seeds, bf16
             seed 1; 7e-2: all precisions, both seeds). The spikes are mild; this region is narrow.
  degraded:  0.1 .. 0.3: loss stays high and noisy around the peak (0.2-0.37 at 0.1 fp32 seed 0,
             vs ~0.05 at the end of a healthy run; jumps 2-17x), ends well above untrained and
             well below healthy: 12.47-15.12 dB at 0.1-0.15 (0.1: all precisions, both seeds;
             fp16 skips 2-5), 11.06-11.10 dB at 0.3 (fp32/bf16 both seeds, fp16 seed 0 with 6
             skips). Exception: fp16 seed 1 at 0.3 already diverges the O2 way (overflow on every
             step from step 34, before the peak; loss scale pinned at the 128 floor, 133 of 160
             steps skipped, weights frozen, 4.43 dB).
  diverges:  1.0 is the edge: fp32/bf16 losses jump 1.6e2-3.6e4x, val 4.6-5.7 dB for 3 epochs,
             ends 9.32-9.82 dB as the lr decays (both seeds); fp16 seed 0 ends 8.68 dB (9 skips),
             fp16 seed 1 overflows on every step from step 5 (158 skipped, scale at 128, 5.15 dB).
             >= 3 (3 and 10 measured): fp32/bf16 end 4.5-5.2 dB (below untrained), losses grow to
             4e5-4e8x the first loss. fp16 at 3: every step from step 9 (seed 0) overflows, scale
             pinned at the 128 floor, 158 of 160 skipped, finite losses ~2.5e4, 4.60 dB; seed 1 nan
             val_psnr (152 of 160 losses inf/nan, 158 skipped). fp16 at 10: nan val_psnr, both
             seeds (159 of 160 losses inf/nan, 159 skipped). The min loss scale does not rescue it.
SWEEP_LR = (3e-3, 10), region edges taken between measured lrs (4e-2, 8.5e-2, 0.55): about 32%
healthy, 9% spiky, 23% degraded, 36% diverged.
CPU s/run (process time, 1 thread, this avx512/AMX CPU, shared with another user): fp32 2.2-4.7,
bf16 1.5-3.4, fp16 (O2, im2col convs) 3.3-5.1.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

DEFAULTS = {
    "lr": 1e-2,
    "precision": "fp32",
    "epochs": 4,
    "seed": 0,
    "steps_per_epoch": 40,
    "batch_size": 16,
    "channels": 24,
    "n_blocks": 2,
    "grad_clip": 1.0,  # None/0 = no clipping (norm still reported)
    "warmup_frac": 0.25,  # fraction of all steps spent warming up linearly to the peak lr
    "final_lr_frac": 0.01,  # cosine decays to this fraction of the peak
    "betas": (0.9, 0.999),
    "adam_eps": 1e-8,
    "weight_decay": 0.0,
    # hand-written fp16 loss scaler (fp16 only)
    "init_loss_scale": 2.0**16,
    "min_loss_scale": 128.0,
    "scale_window": 40,  # clean steps before the scale doubles
    "n_val": 128,
}
METRIC = "val_psnr"
MODE = "max"
SWEEP_LR = (3e-3, 10.0)

VAL_SEED = 12345  # same val set for every seed


def make_images(n, size, gen):
    """Smooth colour field + sharp circles/rectangles + a thin line + a grating patch, in [0, 1]."""
    base = torch.rand(n, 3, 4, 4, generator=gen)
    img = F.interpolate(base, size=(size, size), mode="bicubic", align_corners=False)
    ys = torch.linspace(0, 1, size).view(1, 1, size, 1)
    xs = torch.linspace(0, 1, size).view(1, 1, 1, size)
    for kind in ("circle", "rect", "circle", "rect"):
        if kind == "circle":
            cx = torch.rand(n, 1, 1, 1, generator=gen)
            cy = torch.rand(n, 1, 1, 1, generator=gen)
            r = 0.08 + 0.2 * torch.rand(n, 1, 1, 1, generator=gen)
            mask = (((xs - cx) ** 2 + (ys - cy) ** 2) < r**2).float()
        else:
            x0 = torch.rand(n, 1, 1, 1, generator=gen) * 0.8
            y0 = torch.rand(n, 1, 1, 1, generator=gen) * 0.8
            w = 0.1 + 0.35 * torch.rand(n, 1, 1, 1, generator=gen)
            h = 0.1 + 0.35 * torch.rand(n, 1, 1, 1, generator=gen)
            mask = ((xs >= x0) & (xs < x0 + w) & (ys >= y0) & (ys < y0 + h)).float()
        col = torch.rand(n, 3, 1, 1, generator=gen)
        img = img * (1 - mask) + col * mask
    # a thin (1-2 px) straight line
    ang = torch.rand(n, 1, 1, 1, generator=gen) * math.pi
    off = torch.rand(n, 1, 1, 1, generator=gen) - 0.5
    dist = ((xs - 0.5) * torch.cos(ang) + (ys - 0.5) * torch.sin(ang) - off).abs()
    line = (dist < 0.7 / size).float()
    col = torch.rand(n, 3, 1, 1, generator=gen)
    img = img * (1 - line) + col * line
    # a grating patch (period 6-12 px at 32 px) inside a random square
    period = (6 + 6 * torch.rand(n, 1, 1, 1, generator=gen)) / size
    gang = torch.rand(n, 1, 1, 1, generator=gen) * math.pi
    phase = (xs * torch.cos(gang) + ys * torch.sin(gang)) / period * 2 * math.pi
    grating = 0.5 + 0.5 * torch.sin(phase)
    gx = torch.rand(n, 1, 1, 1, generator=gen) * 0.6
    gy = torch.rand(n, 1, 1, 1, generator=gen) * 0.6
    gmask = ((xs >= gx) & (xs < gx + 0.35) & (ys >= gy) & (ys < gy + 0.35)).float()
    gcol = torch.rand(n, 3, 1, 1, generator=gen)
    img = img * (1 - gmask) + (gcol * grating) * gmask
    return img.clamp(0, 1)


def downsample(hr):
    return F.avg_pool2d(hr, 2)


class Conv2d(nn.Conv2d):
    """nn.Conv2d that runs as im2col + matmul when its weights are float16 (the O2 model).

    On this CPU torch build the fp16 conv backward kernel is ~100x slower than fp32, while fp16
    matmuls are fast. Same math, the matmul is fp16. fp32/bf16 use the native conv. Only zero
    padding, no dilation/groups.
    """

    def forward(self, x):
        if self.weight.dtype != torch.float16:
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


class ResBlock(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.c1 = Conv2d(ch, ch, 3, padding=1)
        self.c2 = Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return x + self.c2(F.relu(self.c1(x)))


class SRNet(nn.Module):
    """head conv -> residual blocks -> conv to 3*4 channels -> PixelShuffle(2)."""

    def __init__(self, ch=24, n_blocks=2):
        super().__init__()
        self.head = Conv2d(3, ch, 3, padding=1)
        self.body = nn.Sequential(*[ResBlock(ch) for _ in range(n_blocks)])
        self.tail = Conv2d(ch, 3 * 4, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x):
        f = F.relu(self.head(x))
        f = f + self.body(f)
        return self.shuffle(self.tail(f))


def psnr(pred, target):
    mse = F.mse_loss(pred.float().clamp(0, 1), target).item()
    if not math.isfinite(mse):
        return float("nan")
    return 10.0 * math.log10(1.0 / max(mse, 1e-10))


def warmup_cosine(total_steps, warmup_frac, final_frac):
    warm = max(1, int(round(warmup_frac * total_steps)))

    def f(s):  # s = number of scheduler steps taken so far (0 for the first optimizer step)
        if s < warm:
            return (s + 1) / warm
        t = min(1.0, (s - warm) / max(1, total_steps - warm))
        return final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * t))

    return f


class LossScaler:
    """Dynamic loss scaler in the style of apex's (O2): halve + skip on overflow, grow after a window."""

    def __init__(self, init_scale, min_scale, window):
        self.scale = float(init_scale)
        self.min_scale = float(min_scale)
        self.window = int(window)
        self.clean = 0

    def update(self, overflow):
        if overflow:
            self.scale = max(self.min_scale, self.scale / 2.0)
            self.clean = 0
        else:
            self.clean += 1
            if self.clean >= self.window:
                self.scale *= 2.0
                self.clean = 0


def train(config, on_step, on_epoch):
    cfg = dict(DEFAULTS)
    cfg.update(config or {})
    torch.set_num_threads(1)
    precision = cfg["precision"]
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"unknown precision {precision!r}")
    bs, spe, epochs = cfg["batch_size"], cfg["steps_per_epoch"], cfg["epochs"]
    total = spe * epochs

    torch.manual_seed(cfg["seed"])
    gen = torch.Generator().manual_seed(cfg["seed"])
    train_hr = make_images(bs * spe, 32, gen)
    train_lr = downsample(train_hr)
    val_gen = torch.Generator().manual_seed(VAL_SEED)
    val_hr = make_images(cfg["n_val"], 32, val_gen)
    val_lr = downsample(val_hr)
    shuffle_gen = torch.Generator().manual_seed(cfg["seed"] + 1)

    model = SRNet(cfg["channels"], cfg["n_blocks"])
    fp16 = precision == "fp16"
    if fp16:
        # O2: the model runs entirely in fp16; Adam steps an fp32 master copy of its weights
        model.half()
        model_params = list(model.parameters())
        master = [p.detach().float().clone().requires_grad_(True) for p in model_params]
        scaler = LossScaler(cfg["init_loss_scale"], cfg["min_loss_scale"], cfg["scale_window"])
    else:
        model_params = list(model.parameters())
        master = model_params
        scaler = None
    opt = torch.optim.Adam(
        master, lr=cfg["lr"], betas=tuple(cfg["betas"]), eps=cfg["adam_eps"], weight_decay=cfg["weight_decay"]
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(total, cfg["warmup_frac"], cfg["final_lr_frac"]))
    clip = cfg["grad_clip"] if cfg["grad_clip"] else float("inf")

    def forward(x):
        if fp16:
            return model(x.half())
        if precision == "bf16":
            with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
                return model(x)
        return model(x)

    step = 0
    for epoch in range(1, epochs + 1):
        model.train()
        perm = torch.randperm(bs * spe, generator=shuffle_gen)
        for i in range(spe):
            idx = perm[i * bs : (i + 1) * bs]
            x, y = train_lr[idx], train_hr[idx]
            for p in model_params:
                p.grad = None
            lr_now = opt.param_groups[0]["lr"]
            out = forward(x).float()
            loss = F.l1_loss(out, y)
            skipped = 0.0
            if fp16:
                scale = scaler.scale
                (loss * scale).backward()
                # fp16 grads -> fp32 master grads, unscaled
                for p, m in zip(model_params, master, strict=True):
                    m.grad = p.grad.float().div_(scale) if p.grad is not None else torch.zeros_like(m)
                gn = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(m.grad) for m in master]))
                overflow = not bool(torch.isfinite(gn))
                if overflow:
                    skipped = 1.0
                else:
                    if math.isfinite(clip) and gn > clip:
                        for m in master:
                            m.grad.mul_(clip / (float(gn) + 1e-6))
                    opt.step()
                    with torch.no_grad():
                        for p, m in zip(model_params, master, strict=True):
                            p.copy_(m)
                scaler.update(overflow)
                for m in master:
                    m.grad = None
            else:
                scale = 1.0
                opt.zero_grad(set_to_none=True)
                loss.backward()
                gn = torch.nn.utils.clip_grad_norm_(model_params, clip)
                opt.step()
            sched.step()
            step += 1
            o = out.detach()
            with torch.no_grad():
                mse = F.mse_loss(o, y).item()
            on_step(
                step,
                {
                    "loss": loss.item(),
                    "train_mse": mse,
                    "model/lr": lr_now,
                    "model/loss_scale": float(scale),
                    "model/skipped": skipped,
                    "model/grad_norm": float(gn),
                    "model/weight_norm_last": model.tail.weight.detach().float().norm().item(),
                    "output_std": o.std().item(),
                    "output_mean": o.mean().item(),
                },
            )

        model.eval()
        with torch.no_grad():
            pred = forward(val_lr).float()
        up = F.interpolate(val_lr, scale_factor=2.0, mode="bilinear", align_corners=False)
        on_epoch(
            epoch,
            {
                METRIC: psnr(pred, val_hr),
                "val_l1": F.l1_loss(pred.clamp(0, 1), val_hr).item(),
                "val_psnr_bilinear": psnr(up, val_hr),
            },
        )
