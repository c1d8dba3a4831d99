"""The one error of `lorafleet.kernels`: bad input, raised before anything is launched."""

from __future__ import annotations


class LoraKernelError(ValueError):
    """Shapes, dtypes, devices or adapter slots that the LoRA kernels cannot accept."""
