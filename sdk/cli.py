"""The `lorafleet` command line.

```
lorafleet endpoints create|list|describe|update|pause|resume|scale-to-zero|delete|logs|usage|wait ...
lorafleet endpoints adapters list|add|remove ENDPOINT ...  (the live adapter set, no restart)
lorafleet controlplane serve|migrate|create-token ...   (delegates to lorafleet.controlplane.cli)
lorafleet gateway serve ...                             (delegates to lorafleet.controlplane.gateway.cli)
lorafleet runtime serve ...                             (delegates to lorafleet.runtime.server.cli)
```
Every `endpoints` command takes `--url`, `--token`, `--namespace` and `--output json|table`.
Results go to stdout, progress and errors to stderr. Exit status: 0 on success, 1 when the
server or the endpoint reports an error, 2 for bad usage, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import _console, _payloads, endpoints
from .adapters import EndpointAdapter
from .client import Client
from .errors import LorafleetError
from .inference_endpoint import InferenceEndpoint
from .usage import EndpointUsage

DELEGATES = {
    "controlplane": ("lorafleet.controlplane.cli", "controlplane"),
    "gateway": ("lorafleet.controlplane.gateway.cli", "controlplane"),
    "runtime": ("lorafleet.runtime.server.cli", "runtime"),
}
Handler = Callable[[argparse.Namespace, Client], Any]


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _json_object(text: str) -> dict[str, Any]:
    """A JSON object given inline or as `@path/to/file.json`."""
    try:
        raw = Path(text[1:]).read_text() if text.startswith("@") else text
        value = json.loads(raw)
    except (OSError, json.JSONDecodeError) as error:
        raise argparse.ArgumentTypeError(f"not a JSON object ({error}): {text!r}") from error
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _spec_options(parser: argparse.ArgumentParser, *, creating: bool) -> None:
    """The endpoint spec flags shared by `create` (some required) and `update` (all optional)."""
    required = creating
    parser.add_argument("--repository", required=required, help="base model: Hub id or local directory")
    parser.add_argument("--framework", default="pytorch" if creating else None)
    for flag in ("--accelerator", "--instance-size", "--instance-type"):
        parser.add_argument(flag, required=required)
    if creating:
        parser.add_argument("--region", required=True)
        parser.add_argument("--vendor", required=True)
    parser.add_argument("--min-replica", type=int, default=1 if creating else None)
    parser.add_argument("--max-replica", type=int, default=1 if creating else None)
    parser.add_argument("--scale-to-zero-timeout", type=int, help="idle minutes before scaling to zero")
    parser.add_argument("--revision")
    parser.add_argument("--task")
    parser.add_argument("--custom-image", type=_json_object, help="JSON object or @file.json")
    parser.add_argument("--env", type=_key_value, action="append", metavar="KEY=VALUE")
    parser.add_argument("--secret", type=_key_value, action="append", metavar="KEY=VALUE")
    if creating:
        types = ["protected", "authenticated", "public", "private"]
        parser.add_argument("--type", default="protected", choices=types)
    parser.add_argument("--domain")
    parser.add_argument("--path")
    parser.add_argument("--tag", action="append", dest="tags")


def _spec_kwargs(args: argparse.Namespace, *, creating: bool) -> dict[str, Any]:
    names = ["repository", "framework", "accelerator", "instance_size", "instance_type", "min_replica",
             "max_replica", "scale_to_zero_timeout", "revision", "task", "custom_image", "domain", "path",
             "tags"]  # fmt: skip
    if creating:
        names += ["region", "vendor", "type"]
    kwargs = {name: getattr(args, name) for name in names}
    kwargs["env"] = dict(args.env) if args.env else None
    kwargs["secrets"] = dict(args.secret) if args.secret else None
    return kwargs


def _wait_options(parser: argparse.ArgumentParser, flag: bool) -> None:
    if flag:
        parser.add_argument("--wait", action="store_true", help="block until the endpoint serves")
    parser.add_argument("--timeout", type=float, help="seconds to wait at most (default: forever)")
    parser.add_argument("--refresh-every", type=float, default=5.0, help="seconds between polls")


def _wait(endpoint: InferenceEndpoint, args: argparse.Namespace) -> InferenceEndpoint:
    with _console.Progress(sys.stderr, f"{endpoint.namespace}/{endpoint.name}") as progress:
        return endpoint.wait(args.timeout, args.refresh_every, on_update=progress.update)


def _target(args: argparse.Namespace) -> dict[str, Any]:
    return {"namespace": args.namespace}


def _cmd_create(args: argparse.Namespace, client: Client) -> InferenceEndpoint:
    kwargs = _spec_kwargs(args, creating=True)
    endpoint = endpoints.create_inference_endpoint(args.name, **kwargs, **_target(args), client=client)
    return _wait(endpoint, args) if args.wait else endpoint


def _cmd_update(args: argparse.Namespace, client: Client) -> InferenceEndpoint:
    kwargs = _spec_kwargs(args, creating=False)
    endpoint = endpoints.update_inference_endpoint(args.name, **kwargs, **_target(args), client=client)
    return _wait(endpoint, args) if args.wait else endpoint


def _cmd_list(args: argparse.Namespace, client: Client) -> list[InferenceEndpoint]:
    namespace = "*" if args.all else args.namespace
    return endpoints.list_inference_endpoints(namespace, client=client)


def _cmd_describe(args: argparse.Namespace, client: Client) -> InferenceEndpoint:
    return endpoints.get_inference_endpoint(args.name, **_target(args), client=client)


def _cmd_pause(args: argparse.Namespace, client: Client) -> InferenceEndpoint:
    return endpoints.pause_inference_endpoint(args.name, **_target(args), client=client)


def _cmd_resume(args: argparse.Namespace, client: Client) -> InferenceEndpoint:
    endpoint = endpoints.resume_inference_endpoint(
        args.name, **_target(args), running_ok=not args.fail_if_running, client=client
    )
    return _wait(endpoint, args) if args.wait else endpoint


def _cmd_scale_to_zero(args: argparse.Namespace, client: Client) -> InferenceEndpoint:
    return endpoints.scale_to_zero_inference_endpoint(args.name, **_target(args), client=client)


def _cmd_delete(args: argparse.Namespace, client: Client) -> dict[str, Any]:
    if not args.yes:
        if not sys.stdin.isatty():
            raise LorafleetError(f"Refusing to delete {args.name!r} without confirmation: pass --yes.")
        answer = input(f"Delete endpoint {args.name!r}? This cannot be undone. [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            raise LorafleetError("Not deleted.")
    endpoints.delete_inference_endpoint(args.name, **_target(args), client=client)
    return {"deleted": args.name, "namespace": client.namespace(args.namespace)}


def _cmd_logs(args: argparse.Namespace, client: Client) -> str:
    call = _payloads.logs_call(client.namespace(args.namespace), args.name, args.tail)
    return _payloads.logs_text(client.request(call))


def _cmd_usage(args: argparse.Namespace, client: Client) -> EndpointUsage:
    return endpoints.get_inference_endpoint(args.name, **_target(args), client=client).usage()


def _cmd_wait(args: argparse.Namespace, client: Client) -> InferenceEndpoint:
    return _wait(endpoints.get_inference_endpoint(args.name, **_target(args), client=client), args)


@dataclass(frozen=True)
class _AdapterList:
    items: list[EndpointAdapter]


def _endpoint_of(args: argparse.Namespace, client: Client) -> InferenceEndpoint:
    return endpoints.get_inference_endpoint(args.name, **_target(args), client=client)


def _cmd_adapters_list(args: argparse.Namespace, client: Client) -> _AdapterList:
    return _AdapterList(_endpoint_of(args, client).list_adapters())


def _cmd_adapters_add(args: argparse.Namespace, client: Client) -> _AdapterList:
    return _AdapterList([_endpoint_of(args, client).add_adapter(args.adapter, args.source, args.revision)])


def _cmd_adapters_remove(args: argparse.Namespace, client: Client) -> dict[str, Any]:
    endpoint = _endpoint_of(args, client)
    endpoint.remove_adapter(args.adapter)
    return {"removed": args.adapter, "endpoint": endpoint.name, "namespace": endpoint.namespace}


def _adapter_commands(subparsers: Any, common: argparse.ArgumentParser) -> None:
    group = subparsers.add_parser("adapters", help="the endpoint's live adapter set (no restart)")
    commands = group.add_subparsers(dest="adapter_command", metavar="{list,add,remove}", required=True)
    helps = {"list": "adapters and their readiness per replica",
             "add": "add an adapter, or replace the one of that name", "remove": "remove an adapter"}
    handlers = {"list": _cmd_adapters_list, "add": _cmd_adapters_add, "remove": _cmd_adapters_remove}
    parsers = {}
    for command, handler in handlers.items():
        parsers[command] = commands.add_parser(command, parents=[common], help=helps[command])
        parsers[command].add_argument("name", help="endpoint name")
        parsers[command].set_defaults(handler=handler)
    add, remove = parsers["add"], parsers["remove"]
    for parser in (add, remove):
        parser.add_argument("adapter", help="adapter name (the adapter_id requests use)")
    add.add_argument("source", help="Hub repo id (org/name) or a folder under the server's LOCAL_ROOTS")
    add.add_argument("--revision", help="Hub branch, tag or commit (default: the default branch)")


def _endpoint_commands(subparsers: Any, common: argparse.ArgumentParser) -> None:
    def add(name: str, handler: Handler, help: str, takes_name: bool = True) -> argparse.ArgumentParser:
        parser = subparsers.add_parser(name, parents=[common], help=help, description=help)
        if takes_name:
            parser.add_argument("name", help="endpoint name")
        parser.set_defaults(handler=handler)
        return parser

    create = add("create", _cmd_create, "create an endpoint")
    _spec_options(create, creating=True)
    _wait_options(create, flag=True)
    update = add("update", _cmd_update, "change an endpoint (only the given fields)")
    _spec_options(update, creating=False)
    _wait_options(update, flag=True)
    listing = add("list", _cmd_list, "list endpoints", takes_name=False)
    listing.add_argument("--all", action="store_true", help="personal namespace and every organization")
    add("describe", _cmd_describe, "show one endpoint")
    add("pause", _cmd_pause, "stop every replica until resumed")
    resume = add("resume", _cmd_resume, "restart a paused or scaled-to-zero endpoint")
    resume.add_argument("--fail-if-running", action="store_true", help="error if it is already running")
    _wait_options(resume, flag=True)
    add("scale-to-zero", _cmd_scale_to_zero,
        "stop every replica; the next request through the endpoint's URL starts it again")
    delete = add("delete", _cmd_delete, "delete an endpoint")
    delete.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    logs = add("logs", _cmd_logs, "print the replicas' logs")
    logs.add_argument("--tail", type=int, help="only the last N lines")
    add("usage", _cmd_usage, "requests, errors, tokens and latencies per adapter")
    wait = add("wait", _cmd_wait, "block until the endpoint is running and healthy")
    _wait_options(wait, flag=False)
    _adapter_commands(subparsers, common)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (delegated command groups only show their help line)."""
    parser = argparse.ArgumentParser(prog="lorafleet", description="Deploy one base LLM, serve many LoRAs.")
    groups = parser.add_subparsers(
        dest="group", metavar="{endpoints,controlplane,gateway,runtime}", required=True
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="control plane URL (default: $LORAFLEET_URL or http://127.0.0.1:8000)")
    common.add_argument("--token", help="API token (default: $LORAFLEET_TOKEN)")
    common.add_argument("--namespace", help="namespace (default: the token's own)")
    common.add_argument("--output", "-o", choices=["table", "json"], default="table")
    endpoints_parser = groups.add_parser("endpoints", help="manage inference endpoints")
    commands = endpoints_parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _endpoint_commands(commands, common)
    groups.add_parser("controlplane", help="run the control plane: serve | migrate | create-token ...")
    groups.add_parser("gateway", help="run an endpoint gateway alone: serve --port ...")
    groups.add_parser("runtime", help="run a runtime replica: serve --model-id ... --lora-adapters ...")
    return parser


def _print_result(result: Any, output: str) -> None:
    if isinstance(result, str):
        text = _console.to_json({"logs": result}) if output == "json" else result
    elif isinstance(result, list):
        as_json = output == "json"
        text = _console.to_json([e.raw for e in result]) if as_json else _console.endpoints_table(result)
    elif isinstance(result, InferenceEndpoint):
        text = _console.to_json(result.raw) if output == "json" else _console.endpoint_table(result)
    elif isinstance(result, EndpointUsage):
        text = _console.to_json(result.raw) if output == "json" else _console.usage_table(result)
    elif isinstance(result, _AdapterList):
        rows = result.items
        text = _console.to_json([a.raw for a in rows]) if output == "json" else _console.adapters_table(rows)
    elif output == "json":
        text = _console.to_json(result)
    elif "removed" in result:
        where = f"{result['namespace']}/{result['endpoint']}"
        text = f"Removed adapter {result['removed']} from endpoint {where}."
    else:
        text = f"Deleted endpoint {result['namespace']}/{result['deleted']}."
    print(text)


def _delegate(group: str, argv: list[str]) -> int:
    module_name, extra = DELEGATES[group]
    if group == "runtime" and argv[:1] == ["serve"]:
        argv = argv[1:]  # the runtime's own CLI is a single command
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        print(f"error: `lorafleet {group}` needs the {extra} extra: pip install 'lorafleet[{extra}]' "
              f"({error})", file=sys.stderr)  # fmt: skip
        return 1
    try:
        return int(module.main(argv) or 0)
    except SystemExit as exit_:  # their argparse exits on --help and usage errors
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else 1)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI with `argv` (default: `sys.argv[1:]`); returns the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] in DELEGATES:
        return _delegate(args_list[0], args_list[1:])
    try:
        args = build_parser().parse_args(args_list)
    except SystemExit as exit_:  # --help (0) and usage errors (2)
        return int(exit_.code or 0)
    try:
        with Client(args.url, args.token) as client:
            _print_result(args.handler(args, client), args.output)
    except (LorafleetError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
