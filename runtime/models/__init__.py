"""Model architectures read straight from Hugging Face checkpoints."""

from lorafleet.runtime.models.loader import ModelLoadError, load_model, read_config

__all__ = ["ModelLoadError", "load_model", "read_config"]
