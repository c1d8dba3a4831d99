"""`lorafleet gateway serve`: the endpoint gateway alone (see `app.py`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lorafleet.controlplane.settings import Settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lorafleet gateway", description="lorafleet endpoint gateway")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve /endpoints/{namespace}/{name}/... from the database")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--log-level", default="info")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the gateway; returns the exit code (1 error, 2 unmigrated database)."""
    args = _parser().parse_args(list(argv) if argv is not None else None)
    from lorafleet.controlplane.errors import ControlPlaneError, NotMigratedError

    try:
        import uvicorn
        from lorafleet.controlplane.gateway.app import create_gateway_app

        settings = Settings()
        app = create_gateway_app(settings)
    except NotMigratedError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 2
    except ControlPlaneError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 1
    print(f"lorafleet gateway on http://{args.host}:{args.port} (database "
          f"{app.state.gateway.database.engine.url.render_as_string(hide_password=True)})", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
