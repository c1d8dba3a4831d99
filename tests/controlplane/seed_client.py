"""The seed article's code, run with the real `huggingface_hub` against our control plane.

Only the base URLs change (docs/controlplane.md): `HF_ENDPOINT` (whoami) is set in the
environment before the import, and `INFERENCE_ENDPOINTS_ENDPOINT` is patched. The adapters and
the base model are local folders (no machine here reaches the Hub). Prints one JSON line.

Usage: python seed_client.py <controlplane url> <model dir> <id=dir,id=dir> <name>
"""

from __future__ import annotations

import json
import sys

import huggingface_hub.constants as constants
import huggingface_hub.hf_api as hf_api

base_url, model_dir, adapters, name = sys.argv[1:5]
constants.INFERENCE_ENDPOINTS_ENDPOINT = f"{base_url}/v2"
hf_api.INFERENCE_ENDPOINTS_ENDPOINT = f"{base_url}/v2"  # huggingface_hub <= 0.24 copies it

from huggingface_hub import create_inference_endpoint  # noqa: E402

# --- the seed's code, unchanged but for the adapters and the repository -----------------------
custom_image = {
    "health_route": "/health",
    "url": "ghcr.io/huggingface/text-generation-inference:2.1.1",  # This is the min version
    "env": {
        "LORA_ADAPTERS": adapters,  # Add adapters here
        "MAX_BATCH_PREFILL_TOKENS": "2048",  # Set according to your needs
        "MAX_INPUT_LENGTH": "256",  # Set according to your needs
        "MAX_TOTAL_TOKENS": "384",  # Set according to your needs
        "MODEL_ID": "/repository",
    },
}

endpoint = create_inference_endpoint(
    name=name,
    repository=model_dir,
    framework="pytorch",
    accelerator="gpu",
    instance_size="x1",
    instance_type="nvidia-l4",
    region="us-east-1",
    vendor="aws",
    min_replica=1,
    max_replica=1,
    task="text-generation",
    custom_image=custom_image,
)
endpoint.wait(timeout=180, refresh_every=1)
# --- end of the seed's code -------------------------------------------------------------------

ready_url = endpoint.url
answers = {}
for adapter_id in [pair.split("=", 1)[0] for pair in adapters.split(",")]:
    answers[adapter_id] = endpoint.client.text_generation(
        "Hello there", max_new_tokens=5, adapter_id=adapter_id
    )
base = endpoint.client.text_generation("Hello there", max_new_tokens=5)
endpoint.pause()
paused = endpoint.status
endpoint.resume()
print(
    json.dumps(
        {
            "status": "ready",
            "url": ready_url,
            "namespace": endpoint.namespace,
            "answers": answers,
            "base": base,
            "paused": paused,
            "resumed": endpoint.status,
        }
    )
)
