"""A tenant sets only the runtime's documented settings and Hub auth, in `env`, the custom image's
env and `secrets` alike, and only the runtime's flags in `model.args`: every other name is refused
with a 400 naming the field and listing what is accepted (issue 12, "replica environment")."""

from __future__ import annotations

import pytest
from lorafleet.controlplane.endpoints.env_policy import (
    HUB_AUTH_ENV,
    RUNTIME_ENV,
    TENANT_ENV,
    TENANT_FLAGS,
    check_args,
    flag_for,
)
from lorafleet.controlplane.errors import BadRequestError
from lorafleet.runtime.server.cli import FLAGS

from tests.controlplane.conftest import Server, endpoint_body

HOSTILE_ENV = [
    ("PYTHONWARNINGS", "all:0:antigravity.x:0:0"),  # imports the browser module at start-up...
    ("BROWSER", "/bin/sh -c 'touch /tmp/pwned' #%s"),  # ...which runs this
    ("LD_PRELOAD", "/tmp/evil.so"),
    ("PYTHONPATH", "/tmp/evil"),
    ("PATH", "/tmp/evil:/usr/bin"),
    ("HF_ENDPOINT", "https://collector.example"),  # would send the tenant's HF_TOKEN there
    ("HF_HOME", "/root/.cache/huggingface"),  # someone else's cache
    ("HOME", "/root"),
    ("HF_HUB_OFFLINE", "0"),  # the operator's decision
    ("API_KEY", "chosen-by-the-tenant"),
    ("PORT", "80"),
    ("HOSTNAME", "0.0.0.0"),
    ("CUDA_VISIBLE_DEVICES", "0,1,2,3"),
    ("LOG_FILE", "/etc/passwd"),
    ("DEVICE", "cuda:7"),
    ("NUM_SHARD", "8"),
]


def test_every_accepted_runtime_setting_is_one_the_runtime_reads() -> None:
    """RUNTIME_ENV against the runtime's own flag table."""
    read = {name: flag for flag in FLAGS for name in flag.env}
    flags = {name for flag in FLAGS for name in (flag.name, *flag.aliases)}
    for name in RUNTIME_ENV:
        assert name in read, f"the runtime reads no {name}"
        assert flag_for(name) in flags, f"the runtime has no flag {flag_for(name)} for {name}"
    assert TENANT_ENV == set(RUNTIME_ENV) | set(HUB_AUTH_ENV)
    launcher_owned = {"--hostname", "--port", "--device", "--api-key", "--num-shard", "--log-file"}
    assert not launcher_owned & set(TENANT_FLAGS)


@pytest.mark.parametrize(("name", "value"), HOSTILE_ENV)
def test_hostile_env_is_refused_naming_the_field(api: Server, name: str, value: str) -> None:
    with api.client() as client:
        response = client.post("/v2/endpoint/alice", json=endpoint_body(env={name: value}))
        listed = client.get("/v2/endpoint/alice").json()["items"]
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["field"] == f"model.env.{name}" and f"model.env.{name}" in error["error"]
    assert set(error["accepted"]) == TENANT_ENV and "MAX_TOTAL_TOKENS" in error["error"]
    assert listed == []


@pytest.mark.parametrize("name", ["LD_PRELOAD", "PORT", "CUDA_VISIBLE_DEVICES", "BROWSER"])
def test_secrets_obey_the_same_names(api: Server, name: str) -> None:
    with api.client() as client:
        response = client.post("/v2/endpoint/alice", json=endpoint_body(secrets={name: "s3cr3t-value"}))
    assert response.status_code == 400 and response.json()["field"] == f"model.secrets.{name}"
    assert "s3cr3t-value" not in response.text  # a secret's value is never echoed


def test_custom_image_env_is_checked_where_it_was_given(api: Server) -> None:
    image = {"custom": {"url": "tgi", "health_route": "/health", "env": {"LD_PRELOAD": "/tmp/evil.so"}}}
    with api.client() as client:
        response = client.post("/v2/endpoint/alice", json=endpoint_body(image=image))
    assert response.status_code == 400 and response.json()["field"] == "model.image.custom.env.LD_PRELOAD"


def test_update_with_hostile_env_or_secret_changes_nothing(api: Server) -> None:
    with api.client() as client:
        created = client.post("/v2/endpoint/alice", json=endpoint_body(env={"MAX_TOTAL_TOKENS": "512"}))
        created.raise_for_status()
        bad_env = client.put("/v2/endpoint/alice/ep-one", json={"model": {"env": {"PYTHONPATH": "/tmp"}}})
        bad_secret = client.put("/v2/endpoint/alice/ep-one", json={"model": {"secrets": {"PORT": "1"}}})
        after = client.get("/v2/endpoint/alice/ep-one").json()
    assert (bad_env.status_code, bad_secret.status_code) == (400, 400)
    assert after["revision"] == 1 and after["model"]["env"] == {"MAX_TOTAL_TOKENS": "512"}


def test_accepted_settings_hub_token_and_flags_pass(api: Server) -> None:
    env = {name: "1" for name in ("MAX_INPUT_LENGTH", "MAX_CONCURRENT_REQUESTS", "PAYLOAD_LIMIT")}
    with api.client() as client:
        response = client.post("/v2/endpoint/alice", json=endpoint_body(
            env=env, secrets={"HF_TOKEN": "hf_x"}, args=["--max-total-tokens", "512", "--dtype=float32"]))
    assert response.status_code == 200, response.text
    assert response.json()["model"]["args"] == ["--max-total-tokens", "512", "--dtype=float32"]


@pytest.mark.parametrize(("args", "index"), [
    (["--hostname", "0.0.0.0"], 0),
    (["--host", "0.0.0.0"], 0),  # argparse would expand the abbreviation to --hostname
    (["--max-total-tokens", "512", "--port=80"], 2),
    (["--api-key", "mine"], 0),
    (["--device", "cuda:3"], 0),
    (["--num-shard", "4"], 0),
    (["--log-file", "/etc/passwd"], 0),
    (["serve"], 0),  # positional
    (["-h"], 0),
    (["--", "--hostname", "0.0.0.0"], 0),
])
def test_runtime_flags_the_launcher_owns_are_refused(api: Server, args: list[str], index: int) -> None:
    with api.client() as client:
        response = client.post("/v2/endpoint/alice", json=endpoint_body(args=args))
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["field"] == f"model.args[{index}]" and "--max-total-tokens" in error["error"]


@pytest.mark.parametrize("args", [["--dtype"], ["--dtype", "--hostname=0.0.0.0"], ["--dtype", "a\x00b"]])
def test_flag_values_must_be_plain(args: list[str]) -> None:
    with pytest.raises(BadRequestError) as refused:
        check_args(args)
    assert refused.value.status_code == 400 and refused.value.extra["field"].startswith("model.args[")


def test_nul_in_a_value_is_refused(api: Server) -> None:
    with api.client() as client:
        response = client.post("/v2/endpoint/alice", json=endpoint_body(env={"MAX_TOTAL_TOKENS": "5\x0012"}))
    assert response.status_code == 400 and "NUL" in response.json()["error"]
