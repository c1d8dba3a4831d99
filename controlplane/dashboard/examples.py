"""Copyable examples of calling an endpoint's URL: curl, huggingface_hub and openai.

The token is never put in a page: examples read it from `$LORAFLEET_TOKEN`. A public endpoint's
examples send none.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Example:
    id: str
    label: str
    code: str


def examples(url: str, adapter: str | None, public: bool) -> list[Example]:
    """curl, huggingface_hub and openai examples for the endpoint at `url` (with `adapter` if any)."""
    auth = "" if public else ' \\\n  -H "Authorization: Bearer $LORAFLEET_TOKEN"'
    adapter_param = f', "adapter_id": "{adapter}"' if adapter else ""
    curl = (f"curl {url}/generate{auth} \\\n  -H 'Content-Type: application/json' \\\n"
            f"""  -d '{{"inputs": "Hello!", "parameters": {{"max_new_tokens": 32{adapter_param}}}}}'""")
    token = "None" if public else 'os.environ["LORAFLEET_TOKEN"]'
    hub = ("import os\nfrom huggingface_hub import InferenceClient\n\n"
           f'client = InferenceClient("{url}", token={token})\n'
           f'print(client.text_generation("Hello!", max_new_tokens=32'
           f'{f", adapter_id={adapter!r}" if adapter else ""}))')
    model = adapter or "tgi"
    openai = ("import os\nfrom openai import OpenAI\n\n"
              f'client = OpenAI(base_url="{url}/v1", api_key={token if not public else repr("none")})\n'
              f'answer = client.chat.completions.create(model="{model}", max_tokens=32,\n'
              '    messages=[{"role": "user", "content": "Hello!"}])\n'
              "print(answer.choices[0].message.content)")
    return [Example("curl", "curl", curl), Example("hub", "huggingface_hub", hub),
            Example("openai", "openai", openai)]
