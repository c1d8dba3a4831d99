"""Per-adapter usage of endpoints: counters and latency histograms, stored per source and per minute."""
