"""beta-VAE loop (16x16 RGB sprites), cyclical KL annealing, free bits, Adam + StepLR.

Procedural data: 16x16 RGB "sprites": a dark vertical-gradient background of random tint, one
square and one circle (circle drawn on top), random position/size, colours from a 7-colour
palette; values in [0, 1]. Model: conv encoder (16 -> 8 -> 4, LeakyReLU 0.2) -> fc to mu and
logvar (latent 16; logvar clamped to [-30, 20] as in LDM's Gaussian posterior), reparameterised
sample, decoder fc -> 4x4 -> nearest upsample + conv -> 8 -> 16 -> conv to 3 logits; output
activation sigmoid. Loss = reconstruction + beta * KL, both summed per image and averaged over
the batch: BCE on the logits (binary_cross_entropy_with_logits; "mse" = MSE on the sigmoid output
is an option), KL to N(0, I), optional free bits (per-dim KL clamped below at free_bits nats,
off by default). Cyclical KL annealing (Fu et al. 2019): n_cycles (4) cycles over the run, beta
ramps linearly 0 -> beta_max (1.0) over the first ramp_frac (0.5) of each cycle, then holds.
Adam (or Adamax), StepLR (step 2 epochs, gamma 0.3) stepped each epoch; grad clipping 1.0
(unscale_ first under fp16; the norm is reported before clipping). "loss" is the optimised total
(BCE + beta * KL); "recon", "kl" (raw), "kl_term" (after free bits) and "beta" are reported too.
Metric: val_mse (min), per-pixel MSE of the sigmoid reconstruction decoded from the posterior mean,
fixed val set (256 images) for every seed. Convs run as im2col + matmul under fp16 autocast
(see Conv2d: CPU fp16 conv backward is slow).

lr regions (lr = Adam lr, DEFAULTS otherwise, 4 epochs x 40 steps, batch 32):
Measured (seeds 0 and 1, 1 CPU thread; untrained (lr=0) 0.1118 seed 0, 0.1180 seed 1; the mean
val image as a constant prediction scores 0.049). "spike" = max finite loss / first loss. The loss
has a floor (BCE of non-binary targets): healthy runs only go from ~535 to ~400-425 (0.75x).
  healthy:   1e-3 .. 1.2e-2 (0.0340-0.0384 at 1e-3, 0.0310-0.0315 at 3e-3, 0.0303-0.0318 at 1e-2;
             fp32/bf16/fp16, both seeds; fp16 1.2e-2 seed 0: 0.0317). Spike 1.0 up to 3e-3,
             2.5-6.4 at 1e-2 (oscillation in steps 2-5), 12 at 1.2e-2 fp16. 3e-4 is healthy but
             slow (0.046-0.051, around the mean-image level); 1e-4 ends 0.059-0.069.
             DEFAULTS lr = 1e-3.
  spiky but recovers: 1.5e-2 .. 2e-2 (fp32/bf16, both seeds): spikes 240x .. 4e6x in the first
             epoch (KL and logits blow up, epoch-1 val 0.067-0.34), then the run recovers and
             ends 0.0318-0.0383, as good as healthy. fp16: 1.5e-2 both seeds (spike 1000-1170x,
             19-20 steps skipped, ends 0.0315-0.033) and 1.7e-2 seed 1 (spike 2070x, ends 0.0348).
  degraded:  2.5e-2 .. 3e-2 (fp32/bf16): spikes 2.6e6-5.4e6x, only partial recovery, ends
             0.049-0.066 at 2.5e-2 (both seeds, both precisions) and 0.074-0.084 at 3e-2 seed 1:
             about the mean-image level or worse, better than untrained. 3e-2 seed 0 is the edge:
             ends 0.125 (fp32) / 0.152 (bf16), worse than untrained.
  diverges:  fp32/bf16 >= 4e-2 (4e-2, 5e-2, 0.1, 0.3, 1.0 measured): ends 0.12-0.59 (worse than
             untrained), max spikes 5.6e6x .. 4e17x, the final loss still 4.7x .. 1e11x the first
             (in 12 of these 20 runs val_kl >= 2.4e8: a latent's logvar at the clamp, 20, where
             its gradient is zero), output_std 0.03-0.50, no nan. fp16 >= 2e-2 (and 1.7e-2 seed 0):
             overflow, 130-153 of 160 losses inf/nan, 156-159 steps skipped, val_mse frozen at
             0.126-0.60 or nan.
fp16 note: the GradScaler skips the first 7 steps at every lr (lr = 0 included) while its scale
drops from 65536 (the summed loss is ~530 per image); grad_norm is inf on skipped steps.
SWEEP_LR = (3e-3, 0.1), region edges taken between measured lrs (fp32/bf16): about 40% healthy,
17% spiky, 13% degraded, 30% diverged; fp16: about 43% healthy, 8% spiky, 49% diverged.
CPU s/run (process time, 1 thread, machine shared with another user): fp32 3.0-5.0, bf16 2.2-4.0,
fp16 5.9-8.4.
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
    "batch_size": 32,
    "channels": 32,
    "latent_dim": 16,
    "recon_loss": "bce",  # "bce" or "mse", summed over pixels
    "beta_max": 1.0,
    "n_cycles": 4,  # cyclical KL annealing: cycles over the whole run
    "ramp_frac": 0.5,  # fraction of each cycle over which beta ramps 0 -> beta_max
    "free_bits": 0.0,  # per latent dim, nats (0 = off)
    "optimizer": "adam",  # or "adamax"
    "weight_decay": 0.0,
    "lr_step_epochs": 2,  # StepLR step_size, stepped once per epoch
    "lr_gamma": 0.3,
    "grad_clip": 1.0,  # None/0 = no clipping (norm still reported, before clipping)
    "n_val": 256,
}
METRIC = "val_mse"
MODE = "min"
SWEEP_LR = (3e-3, 0.1)

VAL_SEED = 12345  # same val set for every seed

PALETTE = torch.tensor(
    [
        [0.90, 0.20, 0.15],
        [0.15, 0.65, 0.25],
        [0.20, 0.35, 0.90],
        [0.95, 0.85, 0.20],
        [0.80, 0.30, 0.80],
        [0.20, 0.80, 0.85],
        [0.95, 0.95, 0.95],
    ]
)


def make_images(n, size, gen):
    """Sprites: a dark vertical-gradient background, one circle and one square of palette colours.

    Factors: background tint, shape positions/sizes, colours (values in [0, 1]).
    """
    ys = torch.linspace(0, 1, size).view(1, 1, size, 1)
    xs = torch.linspace(0, 1, size).view(1, 1, 1, size)
    tint = 0.05 + 0.25 * torch.rand(n, 3, 1, 1, generator=gen)
    img = tint * (0.6 + 0.8 * ys)
    img = img.expand(n, 3, size, size).clone()
    # square
    cx = 0.2 + 0.6 * torch.rand(n, 1, 1, 1, generator=gen)
    cy = 0.2 + 0.6 * torch.rand(n, 1, 1, 1, generator=gen)
    s = 0.12 + 0.15 * torch.rand(n, 1, 1, 1, generator=gen)
    mask = (((xs - cx).abs() < s) & ((ys - cy).abs() < s)).float()
    col = PALETTE[torch.randint(0, PALETTE.shape[0], (n,), generator=gen)].view(n, 3, 1, 1)
    img = img * (1 - mask) + col * mask
    # circle (drawn on top)
    cx = 0.2 + 0.6 * torch.rand(n, 1, 1, 1, generator=gen)
    cy = 0.2 + 0.6 * torch.rand(n, 1, 1, 1, generator=gen)
    r = 0.12 + 0.15 * torch.rand(n, 1, 1, 1, generator=gen)
    mask = (((xs - cx) ** 2 + (ys - cy) ** 2) < r**2).float()
    col = PALETTE[torch.randint(0, PALETTE.shape[0], (n,), generator=gen)].view(n, 3, 1, 1)
    img = img * (1 - mask) + col * mask
    return img.clamp(0, 1)


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


class VAE(nn.Module):
    """Conv encoder 16 -> 8 -> 4 -> (mu, logvar); decoder 4 -> 8 -> 16 (nearest upsample + conv), sigmoid out."""

    def __init__(self, ch=32, zdim=16):
        super().__init__()
        self.ch = ch
        self.enc = nn.Sequential(
            Conv2d(3, ch, 3, padding=1),
            nn.LeakyReLU(0.2),
            Conv2d(ch, ch, 4, stride=2, padding=1),  # 8x8
            nn.LeakyReLU(0.2),
            Conv2d(ch, 2 * ch, 4, stride=2, padding=1),  # 4x4
            nn.LeakyReLU(0.2),
        )
        self.fc_mu = nn.Linear(2 * ch * 16, zdim)
        self.fc_logvar = nn.Linear(2 * ch * 16, zdim)
        self.fc_dec = nn.Linear(zdim, 2 * ch * 16)
        self.dec = nn.Sequential(
            nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2.0, mode="nearest"),  # 8x8
            Conv2d(2 * ch, ch, 3, padding=1),
            nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2.0, mode="nearest"),  # 16x16
            Conv2d(ch, ch, 3, padding=1),
            nn.LeakyReLU(0.2),
        )
        self.out = Conv2d(ch, 3, 3, padding=1)

    def encode(self, x):
        h = self.enc(x).flatten(1)
        return self.fc_mu(h).float(), self.fc_logvar(h).float().clamp(-30.0, 20.0)  # clamp as in LDM

    def decode_logits(self, z):
        h = self.fc_dec(z).view(-1, 2 * self.ch, 4, 4)
        return self.out(self.dec(h))

    def decode(self, z):
        return torch.sigmoid(self.decode_logits(z).float())  # output activation: sigmoid

    def forward(self, x):
        """Returns the decoder logits (the loss takes logits), mu and logvar."""
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decode_logits(z), mu, logvar


def beta_at(step, total_steps, cfg):
    """Cyclical annealing (Fu et al. 2019): within each cycle beta ramps linearly 0 -> beta_max, then holds."""
    period = total_steps / cfg["n_cycles"]
    pos = (step % period) / period  # step counts from 0
    return cfg["beta_max"] * min(1.0, pos / cfg["ramp_frac"]) if cfg["ramp_frac"] > 0 else cfg["beta_max"]


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
    precision = cfg["precision"]
    bs, spe, epochs = cfg["batch_size"], cfg["steps_per_epoch"], cfg["epochs"]
    total_steps = spe * epochs

    torch.manual_seed(cfg["seed"])
    gen = torch.Generator().manual_seed(cfg["seed"])
    train_x = make_images(bs * spe, 16, gen)
    val_x = make_images(cfg["n_val"], 16, torch.Generator().manual_seed(VAL_SEED))
    shuffle_gen = torch.Generator().manual_seed(cfg["seed"] + 1)

    model = VAE(cfg["channels"], cfg["latent_dim"])
    opt_cls = torch.optim.Adamax if cfg["optimizer"] == "adamax" else torch.optim.Adam
    opt = opt_cls(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg["lr_step_epochs"], gamma=cfg["lr_gamma"])
    scaler = torch.amp.GradScaler("cpu") if precision == "fp16" else None
    params = list(model.parameters())
    clip = cfg["grad_clip"] if cfg["grad_clip"] else float("inf")

    def compute_loss(logits, x, mu, logvar, beta):
        # per-image sums, averaged over the batch (the usual VAE ELBO scaling)
        with torch.autocast(device_type="cpu", enabled=False):
            if cfg["recon_loss"] == "bce":
                # on the logits: stable, and no range check that a nan output would trip
                rec = F.binary_cross_entropy_with_logits(logits.float(), x, reduction="sum") / x.shape[0]
            else:
                rec = F.mse_loss(torch.sigmoid(logits.float()), x, reduction="sum") / x.shape[0]
        kl_dim = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).mean(0)  # per latent dim, nats
        kl = kl_dim.sum()
        kl_term = kl_dim.clamp(min=cfg["free_bits"]).sum() if cfg["free_bits"] > 0 else kl
        return rec + beta * kl_term, rec, kl, kl_term

    step = 0
    for epoch in range(1, epochs + 1):
        model.train()
        perm = torch.randperm(bs * spe, generator=shuffle_gen)
        for i in range(spe):
            x = train_x[perm[i * bs : (i + 1) * bs]]
            beta = beta_at(step, total_steps, cfg)
            opt.zero_grad(set_to_none=True)
            with _autocast(precision):
                logits, mu, logvar = model(x)
                loss, rec, kl, kl_term = compute_loss(logits, x, mu, logvar, beta)
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
            o = torch.sigmoid(logits.detach().float())
            on_step(
                step,
                {
                    "loss": loss.item(),
                    "recon": rec.item(),
                    "kl": kl.item(),
                    "kl_term": kl_term.item(),  # the KL with free bits applied (= kl when free_bits = 0)
                    "beta": beta,
                    "model/lr": opt.param_groups[0]["lr"],
                    "model/loss_scale": float(scale),
                    "model/skipped": skipped,
                    "model/grad_norm": float(gn),
                    "model/weight_norm_last": model.out.weight.detach().norm().item(),
                    "output_std": o.std().item(),
                    "output_mean": o.mean().item(),
                },
            )
        sched.step()

        model.eval()
        with torch.no_grad(), _autocast(precision):
            mu, logvar = model.encode(val_x)
            pred = model.decode(mu.float()).float()  # reconstruct from the posterior mean
            kl_val = 0.5 * (mu.float().pow(2) + logvar.float().exp() - 1.0 - logvar.float()).sum(1).mean()
        val_mse = F.mse_loss(pred, val_x).item()
        on_epoch(
            epoch,
            {
                METRIC: val_mse if math.isfinite(val_mse) else float("nan"),
                "val_kl": kl_val.item(),
            },
        )
