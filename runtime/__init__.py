"""lorafleet runtime: a TGI-compatible multi-LoRA inference server."""
