"""The hardware catalog: vendors → regions → instance types (`GET /v2/provider`)."""
