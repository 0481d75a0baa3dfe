"""An OpenAI-compatible HTTP gateway in front of the same engine as the gRPC API.

``/v1/models``, ``/v1/completions`` and ``/v1/chat/completions`` (streamed as server-sent events
or whole), so that existing OpenAI clients and tools call an edited model unchanged: the
``model`` field names ``model``, ``model@alias`` or ``model@version``, every response names the
version that served it, and callers authenticate with the same API keys (``Bearer sk_…``).
``scalpel serve --http-address HOST:PORT`` serves it from the same process as gRPC.
"""

from service.gateway.app import build_app
from service.gateway.http_server import HttpGateway

__all__ = ["HttpGateway", "build_app"]
