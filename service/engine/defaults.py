"""The engine's default sizes. Torch-free, so that the server's configuration reads them before the
seconds that torch and transformers take to import (service.server_config)."""

from __future__ import annotations

#: Bytes of prompt prefixes' keys and values a scheduler keeps (service.engine.prefix_cache) unless told.
PREFIX_CACHE_BYTES = 256 << 20

#: Rows one decode step may hold unless told (the scheduler's ``max_rows``; config ``max_batch_rows``).
MAX_BATCH_ROWS = 256
