"""CLI behaviour that needs no control plane: usage errors, delegation, rendering, progress."""

from __future__ import annotations

import io
import threading
import time

import pytest
from lorafleet import InferenceEndpoint, cli
from lorafleet._console import Progress, endpoint_table, endpoints_table

from tests.sdk.scripted_server import endpoint_json


def _endpoint(**kwargs) -> InferenceEndpoint:
    return InferenceEndpoint.from_raw(endpoint_json(**kwargs), namespace="alice")


def test_help_exits_zero_and_lists_the_groups(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "endpoints" in out and "controlplane" in out and "runtime" in out


def test_missing_required_create_flags_is_a_usage_error(capsys):
    assert cli.main(["endpoints", "create", "ep", "--repository", "r"]) == 2
    assert "--accelerator" in capsys.readouterr().err


BAD_FLAGS = [["--env", "NOEQUALS"], ["--custom-image", "[1, 2]"], ["--custom-image", "{"]]


@pytest.mark.parametrize("bad", BAD_FLAGS)
def test_malformed_flag_values_are_usage_errors(capsys, bad):
    assert cli.main(["endpoints", "update", "ep", *bad]) == 2
    assert "error" in capsys.readouterr().err


def test_unreachable_control_plane_is_exit_1_with_the_url(capsys):
    assert cli.main(["endpoints", "list", "--url", "http://127.0.0.1:9", "--namespace", "alice"]) == 1
    assert "GET http://127.0.0.1:9/v2/endpoint/alice failed after 4 attempts" in capsys.readouterr().err


def test_delete_refuses_without_confirmation_when_not_a_terminal(capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert cli.main(["endpoints", "delete", "ep", "--url", "http://127.0.0.1:9", "--namespace", "a"]) == 1
    assert "--yes" in capsys.readouterr().err


def test_runtime_serve_delegates_to_the_runtime_cli(capsys, monkeypatch):
    monkeypatch.delenv("MODEL_ID", raising=False)
    assert cli.main(["runtime", "serve", "--port", "notaport", "--model-id", "/m"]) == 2
    assert "--port" in capsys.readouterr().err


def test_controlplane_group_delegates_or_names_the_missing_extra(capsys):
    try:
        import lorafleet.controlplane.cli  # noqa: F401
    except ImportError:
        assert cli.main(["controlplane", "serve"]) == 1
        assert "lorafleet[controlplane]" in capsys.readouterr().err
    else:
        assert cli.main(["controlplane", "--help"]) == 0
        assert "migrate" in capsys.readouterr().out


def test_endpoint_table_shows_state_url_and_adapters():
    raw = endpoint_json(state="running", url="http://127.0.0.1:5", message="ready")
    raw["model"]["env"] = {"LORA_ADAPTERS": "a=/x,b=/y"}
    text = endpoint_table(InferenceEndpoint.from_raw(raw, namespace="alice"))
    rows = dict(line.split(None, 1) for line in text.splitlines())
    assert rows["status"] == "running" and rows["url"] == "http://127.0.0.1:5"
    assert rows["adapters"] == "a=/x,b=/y" and rows["namespace"] == "alice"
    assert rows["created"] == "2024-07-18 12:41:53 UTC"


def test_endpoints_table_aligns_columns():
    text = endpoints_table([_endpoint(name="a"), _endpoint(name="longer-name", state="running", url="http://h")])
    header, first, second = text.splitlines()
    assert header.index("STATUS") == first.index("pending") == second.index("running")
    assert endpoints_table([]) == "No endpoints."


def test_progress_prints_one_line_per_state_change_when_not_a_terminal():
    stream = io.StringIO()
    with Progress(stream, "alice/ep") as progress:
        for state in ("pending", "pending", "initializing", "running"):
            progress.update(_endpoint(state=state))
    lines = stream.getvalue().splitlines()
    assert [line.split(": ")[1].split(" (")[0] for line in lines] == ["pending", "initializing", "running"]
    assert "\r" not in stream.getvalue()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_draws_a_spinner_on_a_terminal_and_clears_it():
    stream = _Terminal()
    with Progress(stream, "alice/ep") as progress:
        progress.update(_endpoint(state="initializing", message="loading"))
        drawn = threading.Event()
        for _ in range(100):  # the spinner thread redraws every 0.1 s
            if "initializing - loading" in stream.getvalue():
                drawn.set()
                break
            time.sleep(0.05)
    output = stream.getvalue()
    assert drawn.is_set()
    assert output.startswith("\r\033[K") and output.endswith("\r\033[K")
    assert "alice/ep: initializing - loading" in output
