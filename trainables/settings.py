"""The settings every built-in trainer shares: precision, loss scaler, data, seed, device."""

from __future__ import annotations

from dataclasses import dataclass

from trainables.images import folder_problem
from trainables.precision import ScalerSettings, precision_problem
from trainables.runtime import pick_device


@dataclass
class RunSettings:
    """Precision and its loss scaler, where data come from, seed, device and diagnostics.

    A trainer's config dataclass inherits these fields; their names are sweep parameter names.
    """

    precision: str = "fp32"
    init_scale: float = 65536.0
    growth_interval: int = 2000
    min_loss_scale: float = 0.0
    seed: int = 0
    device: str = "auto"
    data_dir: str = ""
    diagnostics: bool = True

    @property
    def scaler(self) -> ScalerSettings:
        """The loss scaler settings (used by fp16 and fp16-o2)."""
        return ScalerSettings(self.init_scale, self.growth_interval, self.min_loss_scale)

    def run_problems(self) -> list[tuple[str, str]]:
        """Every shared value that cannot work, as ``(field, message)`` pairs."""
        found: list[tuple[str, str]] = []
        if self.init_scale <= 0:
            found.append(("init_scale", f"must be > 0, got {self.init_scale}"))
        if self.growth_interval < 1:
            found.append(("growth_interval", f"must be >= 1, got {self.growth_interval}"))
        if self.min_loss_scale < 0:
            found.append(("min_loss_scale", f"must be >= 0, got {self.min_loss_scale}"))
        try:
            device = pick_device(self.device)
        except RuntimeError:  # torch's own message is a multi-line list of every device type
            found.append(("device", f"{self.device!r} is not a device: auto, cpu, cuda, cuda:N or mps"))
            return found
        problem = precision_problem(self.precision, device)
        if problem:
            found.append(("precision", problem))
        if self.data_dir and (problem := folder_problem(self.data_dir)):
            found.append(("data_dir", problem))
        return found
