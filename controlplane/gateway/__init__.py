"""The endpoint gateway: one stable, authenticated URL per endpoint in front of its replicas.

`service.Gateway` owns the parts (`registry`, `holdings`, `routing`, `limits`, `meter`, `auth`,
`forward`) and their background loops; `asgi.GatewayApp` is what `/endpoints` serves. Served by
`lorafleet controlplane serve`, and alone (stateless, any number behind a load balancer) by
`lorafleet gateway serve` (`cli.py`, `app.py`). See docs/controlplane.md#gateway.
"""
