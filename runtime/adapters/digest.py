"""An adapter's content digest: `lorafleet.adapter_digest` (shared with the control plane, which
must not import torch; this package's `__init__` does)."""

from lorafleet.adapter_digest import CHUNK, FILES, adapter_digest

__all__ = ["CHUNK", "FILES", "adapter_digest"]
