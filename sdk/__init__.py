"""lorafleet SDK."""
