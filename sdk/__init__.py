"""lorafleet SDK: deploy one base LLM, serve many LoRA fine-tunes, with `huggingface_hub`'s API.

Drop-in for the Inference Endpoints functions of `huggingface_hub`, pointed at a lorafleet
control plane (`LORAFLEET_URL`, default `http://127.0.0.1:8000`; token `LORAFLEET_TOKEN`).

Example:
    ```python
    >>> from lorafleet import create_inference_endpoint
    >>> endpoint = create_inference_endpoint(
    ...     "mistral-7b-multi-lora", repository="mistralai/Mistral-7B-v0.1", framework="pytorch",
    ...     accelerator="gpu", instance_size="x1", instance_type="nvidia-l4", region="us-east-1",
    ...     vendor="aws", env={"LORA_ADAPTERS": "predibase/customer_support,predibase/magicoder"},
    ... )
    >>> endpoint.wait()
    >>> endpoint.client.text_generation("Hello", max_new_tokens=40, adapter_id="predibase/customer_support")
    ```

The async variant lives in `lorafleet.aio`. The SDK imports only httpx, pydantic and huggingface_hub.
"""

from ._http import RetryPolicy, __version__
from .adapters import EndpointAdapter
from .async_endpoint import AsyncInferenceEndpoint
from .client import AsyncClient, Client
from .endpoints import (
    create_inference_endpoint,
    delete_inference_endpoint,
    get_inference_endpoint,
    list_inference_endpoints,
    pause_inference_endpoint,
    resume_inference_endpoint,
    scale_to_zero_inference_endpoint,
    update_inference_endpoint,
)
from .errors import (
    AuthenticationError,
    Conflict,
    EndpointFailed,
    EndpointNotFound,
    LorafleetError,
    NetworkError,
    Timeout,
    ValidationError,
)
from .inference_endpoint import (
    InferenceEndpoint,
    InferenceEndpointStatus,
    InferenceEndpointType,
)
from .usage import AdapterUsage, EndpointUsage

__all__ = [
    "AdapterUsage",
    "AsyncClient",
    "AsyncInferenceEndpoint",
    "AuthenticationError",
    "Client",
    "Conflict",
    "EndpointAdapter",
    "EndpointFailed",
    "EndpointNotFound",
    "EndpointUsage",
    "InferenceEndpoint",
    "InferenceEndpointStatus",
    "InferenceEndpointType",
    "LorafleetError",
    "NetworkError",
    "RetryPolicy",
    "Timeout",
    "ValidationError",
    "__version__",
    "create_inference_endpoint",
    "delete_inference_endpoint",
    "get_inference_endpoint",
    "list_inference_endpoints",
    "pause_inference_endpoint",
    "resume_inference_endpoint",
    "scale_to_zero_inference_endpoint",
    "update_inference_endpoint",
]
