"""The runtime's HTTP server: TGI- and OpenAI-compatible routes over one `Engine`.

`create_app(config)` builds the FastAPI app (the engine loads on a background thread, `/health`
answers 503 until it is ready); `cli.main` parses TGI's flags and env vars and runs it.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lorafleet")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"
