"""Building blocks of the runtime's models: rotary, paged attention, LoRA linear, sampler."""
