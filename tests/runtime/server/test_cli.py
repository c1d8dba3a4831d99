"""Flags and env vars as TGI users set them; bad values stop the start with the flag's name."""

from __future__ import annotations

import subprocess
import sys

import pytest
from lorafleet.runtime.args import AdapterSource
from lorafleet.runtime.server.cli import parse_config
from lorafleet.runtime.server.config import ConfigError, parse_adapter_list


def test_env_vars_configure_the_server_as_tgi_names_them():
    env = {
        "MODEL_ID": "/repository",
        "LORA_ADAPTERS": "predibase/customer_support,predibase/magicoder",
        "MAX_INPUT_LENGTH": "1024",
        "MAX_TOTAL_TOKENS": "1512",
        "MAX_BATCH_PREFILL_TOKENS": "2048",
        "PORT": "8080",
        "HOSTNAME": "127.0.0.1",
    }
    config = parse_config([], env=env)
    assert config.engine.model_id == "/repository"
    assert [a.adapter_id for a in config.engine.adapters] == [
        "predibase/customer_support",
        "predibase/magicoder",
    ]
    engine = config.engine
    assert (engine.max_input_tokens, engine.max_total_tokens, engine.max_batch_prefill_tokens) == (
        1024,
        1512,
        2048,
    )
    assert (config.hostname, config.port) == ("127.0.0.1", 8080)


def test_flags_win_over_env_vars():
    config = parse_config(
        ["--model-id", "flag-model", "--port", "9000"], env={"MODEL_ID": "env", "PORT": "1"}
    )
    assert (config.engine.model_id, config.port) == ("flag-model", 9000)


def test_max_input_tokens_is_accepted_as_an_alias_of_max_input_length():
    assert parse_config(["--model-id", "m"], env={"MAX_INPUT_TOKENS": "77"}).engine.max_input_tokens == 77
    assert parse_config(["--model-id", "m", "--max-input-tokens", "78"], env={}).engine.max_input_tokens == 78


def test_defaults_match_tgi_port_and_concurrency():
    config = parse_config(["--model-id", "m"], env={})
    assert (config.hostname, config.port, config.max_concurrent_requests) == ("0.0.0.0", 3000, 128)
    assert config.engine.adapters == ()


@pytest.mark.parametrize(
    ("argv", "env", "named"),
    [
        (["--max-total-tokens", "abc"], {}, "--max-total-tokens"),
        ([], {"MAX_TOTAL_TOKENS": "-3"}, "MAX_TOTAL_TOKENS"),
        (["--port", "70000"], {}, "--port"),
        ([], {"PORT": "http"}, "PORT"),
        (["--dtype", "float8"], {}, "--dtype"),
        (["--max-concurrent-requests", "0"], {}, "--max-concurrent-requests"),
        (["--max-loaded-adapters", "x"], {}, "--max-loaded-adapters"),
        (["--lora-adapters", "a=,b"], {}, "--lora-adapters"),
        (["--lora-adapters", "a,a"], {}, "--lora-adapters"),
        (["--lora-adapters", "a,b,c", "--max-loaded-adapters", "2"], {}, "--max-loaded-adapters"),
        (["--max-input-length", "100", "--max-total-tokens", "100"], {}, "--max-input-length"),
        (["--max-input-length", "100", "--max-batch-prefill-tokens", "50"], {}, "--max-batch-prefill-tokens"),
        (["--cuda-graphs", "sometimes"], {}, "--cuda-graphs"),
        ([], {"CUDA_GRAPHS": "2"}, "CUDA_GRAPHS"),
    ],
)
def test_bad_values_raise_an_error_naming_the_flag(argv, env, named):
    with pytest.raises(ConfigError, match=named):
        parse_config(["--model-id", "m", *argv], env=env)


def test_cuda_graphs_default_to_the_engines_choice_and_can_be_turned_off():
    assert parse_config(["--model-id", "m"], env={}).engine.cuda_graphs is None
    assert parse_config(["--model-id", "m", "--cuda-graphs", "false"], env={}).engine.cuda_graphs is False
    assert parse_config(["--model-id", "m"], env={"CUDA_GRAPHS": "true"}).engine.cuda_graphs is True


def test_a_missing_model_id_is_an_error_naming_the_flag():
    with pytest.raises(ConfigError, match="--model-id/MODEL_ID is required"):
        parse_config([], env={})


def test_adapter_list_parses_names_paths_and_revisions(tmp_path):
    local = tmp_path / "with@at"
    local.mkdir()
    parsed = parse_adapter_list(f"org/a, org/b@v2 ,named=org/c@main,local={local}")
    assert parsed == (
        AdapterSource("org/a", "org/a", None),
        AdapterSource("org/b", "org/b", "v2"),
        AdapterSource("named", "org/c", "main"),
        AdapterSource("local", str(local), None),  # an existing path keeps its '@'
    )


def test_the_module_entry_point_exits_2_with_the_flag_in_stderr():
    proc = subprocess.run(
        [sys.executable, "-m", "lorafleet.runtime", "--model-id", "m", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "--port/PORT" in proc.stderr


# The contract with the control plane: every variable it lets tenants set, or sets itself, is a
# real flag of the runtime (CUDA_VISIBLE_DEVICES is read by CUDA itself).
TENANT_VARIABLES = [
    "MODEL_ID", "REVISION", "LORA_ADAPTERS", "DTYPE", "MAX_INPUT_LENGTH", "MAX_INPUT_TOKENS",
    "MAX_TOTAL_TOKENS", "MAX_BATCH_PREFILL_TOKENS", "MAX_BATCH_TOTAL_TOKENS", "MAX_CONCURRENT_REQUESTS",
    "MAX_LOADED_ADAPTERS", "BLOCK_SIZE", "NUM_KV_BLOCKS", "LOG_LEVEL", "PAYLOAD_LIMIT", "ALLOW_HUB_ADAPTERS",
]  # fmt: skip
LAUNCHER_VARIABLES = ["PORT", "HOSTNAME", "API_KEY", "DEVICE", "NUM_SHARD", "LOG_FILE", "LOG_MAX_BYTES"]


def test_every_variable_of_the_control_plane_contract_is_a_runtime_flag():
    from lorafleet.runtime.server.cli import FLAGS

    known = {variable for flag in FLAGS for variable in flag.env}
    assert set(TENANT_VARIABLES + LAUNCHER_VARIABLES) <= known


def test_security_settings_come_from_the_launchers_variables(tmp_path):
    env = {
        "API_KEY": "k3y",
        "PAYLOAD_LIMIT": "4096",
        "ALLOW_HUB_ADAPTERS": "true",
        "LOG_FILE": str(tmp_path / "replica.log"),
        "LOG_MAX_BYTES": "100000",
        "NUM_SHARD": "1",
    }
    config = parse_config(["--model-id", "m"], env=env)
    assert (config.api_key, config.payload_limit, config.engine.allow_hub_adapters) == ("k3y", 4096, True)
    assert (config.log_file, config.log_max_bytes) == (str(tmp_path / "replica.log"), 100000)
    assert "k3y" not in repr(config)


def test_defaults_are_an_open_replica_with_tgis_payload_limit_and_no_hub_adapters():
    config = parse_config(["--model-id", "m"], env={})
    assert (config.api_key, config.payload_limit, config.engine.allow_hub_adapters) == (
        None,
        2_000_000,
        False,
    )
    assert (config.log_file, config.log_max_bytes) == (None, 10_000_000)


def test_allow_hub_adapters_is_a_switch_that_also_takes_a_value():
    assert parse_config(["--model-id", "m", "--allow-hub-adapters"], env={}).engine.allow_hub_adapters
    off = parse_config(["--model-id", "m", "--allow-hub-adapters", "false"], env={"ALLOW_HUB_ADAPTERS": "1"})
    assert not off.engine.allow_hub_adapters


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"PAYLOAD_LIMIT": "0"}, "PAYLOAD_LIMIT"),
        ({"PAYLOAD_LIMIT": "2MB"}, "PAYLOAD_LIMIT"),
        ({"ALLOW_HUB_ADAPTERS": "maybe"}, "ALLOW_HUB_ADAPTERS"),
        ({"LOG_MAX_BYTES": "1000"}, "LOG_MAX_BYTES"),
        ({"NUM_SHARD": "0"}, "NUM_SHARD"),
        ({"NUM_SHARD": "65"}, "NUM_SHARD"),
        ({"NUM_SHARD": "-2"}, "NUM_SHARD"),
        ({"NUM_SHARD": "two"}, "NUM_SHARD"),
        ({"NUM_SHARD": str(10**30)}, "NUM_SHARD"),
    ],
)
def test_bad_security_values_name_their_variable(env, named):
    with pytest.raises(ConfigError, match=named):
        parse_config(["--model-id", "m"], env=env)


def test_num_shard_reaches_the_engine_and_defaults_to_the_devices():
    assert parse_config(["--model-id", "m"], env={"NUM_SHARD": "4"}).engine.num_shard == 4
    assert parse_config(["--model-id", "m", "--num-shard", "2"], env={"NUM_SHARD": "4"}).engine.num_shard == 2
    assert parse_config(["--model-id", "m"], env={}).engine.num_shard is None  # every visible GPU, or 1


def test_a_bad_api_key_is_refused_without_echoing_it():
    with pytest.raises(ConfigError, match="--api-key") as caught:
        parse_config(["--model-id", "m", "--api-key", "   "], env={})
    assert "(hidden)" in str(caught.value) and "'   '" not in str(caught.value)


def test_a_log_file_that_cannot_be_opened_exits_2_naming_the_flag(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lorafleet.runtime",
            "--model-id",
            "m",
            "--log-file",
            str(tmp_path / "no" / "x.log"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "--log-file/LOG_FILE" in proc.stderr
