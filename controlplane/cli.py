"""`lorafleet controlplane ...`: serve, migrate, create-token, list-tokens, revoke-token.

`main(argv)` is the stable entry point: the SDK's `lorafleet controlplane` CLI and
`python -m lorafleet.controlplane` both call it. `create-token` prints the token as the last line
of stdout, so scripts can take `tail -n1`.
"""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Sequence

from lorafleet.controlplane.settings import Settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lorafleet controlplane", description="lorafleet control plane")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the API server and the reconciler")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--log-level", default="info")
    commands.add_parser("migrate", help="upgrade the database schema to the newest revision")
    create = commands.add_parser("create-token", help="create an API token (printed as the last line)")
    create.add_argument("--namespace", required=True)
    create.add_argument("--description", default="")
    commands.add_parser("list-tokens", help="list API tokens (prefixes only)")
    revoke = commands.add_parser("revoke-token", help="revoke a token by id or prefix")
    group = revoke.add_mutually_exclusive_group(required=True)
    group.add_argument("--id", type=int)
    group.add_argument("--prefix")
    commands.add_parser(
        "stop-all-replicas", help="stop every replica the launcher can find (after shutting the server down)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one subcommand; returns the process exit code (0 ok, 1 error, 2 unmigrated DB)."""
    args = _parser().parse_args(list(argv) if argv is not None else None)
    settings = Settings()
    from lorafleet.controlplane.errors import ControlPlaneError, NotMigratedError

    try:
        return _COMMANDS[args.command](settings, args)
    except NotMigratedError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 2
    except ControlPlaneError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 1


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn
    from lorafleet.controlplane.app import create_app
    from lorafleet.controlplane.auth.service import has_any_token
    from lorafleet.controlplane.db import Database

    if "public_url" not in settings.model_fields_set:  # endpoints' URLs point at this server
        host = args.host if args.host not in ("0.0.0.0", "::", "") else socket.getfqdn()
        settings = settings.model_copy(update={"public_url": f"http://{host}:{args.port}"})
    app = create_app(settings)
    database: Database = app.state.database
    with database.session() as session:
        if not has_any_token(session):
            print(
                "No API token exists yet. Create one with:\n"
                "  lorafleet controlplane create-token --namespace <your-name>",
                flush=True,
            )
    isolation = getattr(app.state.launcher, "isolation", None)
    print(
        f"lorafleet control plane on http://{args.host}:{args.port} "
        f"(database {database.engine.url.render_as_string(hide_password=True)}, "
        f"launcher {settings.launcher}"
        + (f", replica isolation: {isolation.label}" if isolation is not None else "")
        + f"); endpoints at {settings.public_url}/endpoints/<namespace>/<name>",
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    from lorafleet.controlplane.db import migrate

    migrate(settings.resolved_database_url)
    print("database is at the newest schema revision")
    return 0


def _create_token(settings: Settings, args: argparse.Namespace) -> int:
    from lorafleet.controlplane.auth.service import create_token

    with _session(settings) as session:
        info, token = create_token(session, namespace=args.namespace, description=args.description)
    print(f"created token #{info.id} for namespace {info.namespace!r}; it is shown only once:")
    print(token)
    return 0


def _list_tokens(settings: Settings, args: argparse.Namespace) -> int:
    from lorafleet.controlplane.auth.service import list_tokens

    with _session(settings) as session:
        tokens = list_tokens(session)
    print(f"{'id':>4}  {'namespace':<20} {'prefix':<12} {'created':<20} {'last used':<20} status")
    for t in tokens:
        status = "revoked" if t.revoked_at else "active"
        used = t.last_used_at.strftime("%Y-%m-%d %H:%M:%S") if t.last_used_at else "-"
        created = t.created_at.strftime("%Y-%m-%d %H:%M:%S")
        print(f"{t.id:>4}  {t.namespace:<20} {t.prefix:<12} {created:<20} {used:<20} {status}")
    return 0


def _revoke_token(settings: Settings, args: argparse.Namespace) -> int:
    from lorafleet.controlplane.auth.service import revoke_token

    with _session(settings) as session:
        count = revoke_token(session, token_id=args.id, prefix=args.prefix)
    print(f"revoked {count} token(s)")
    return 0


def _stop_all_replicas(settings: Settings, args: argparse.Namespace) -> int:
    from lorafleet.controlplane.launchers import create_launcher

    launcher = create_launcher(settings)
    handles = launcher.adopt()
    for handle in handles:
        launcher.stop(handle)
    launcher.close()
    print(f"stopped {len(handles)} replica(s)")
    return 0


def _session(settings: Settings):  # type: ignore[no-untyped-def]
    from lorafleet.controlplane.db import Database, check_migrated

    database = Database(settings.resolved_database_url)
    check_migrated(database.engine)
    return database.session()


_COMMANDS = {
    "serve": _serve,
    "migrate": _migrate,
    "create-token": _create_token,
    "list-tokens": _list_tokens,
    "revoke-token": _revoke_token,
    "stop-all-replicas": _stop_all_replicas,
}


if __name__ == "__main__":
    sys.exit(main())
