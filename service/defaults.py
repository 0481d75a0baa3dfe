"""Default sizes shared by the server's configuration and the parts it configures. Torch-free, so
that a configuration is read and checked before the seconds that torch and transformers take to
import (service.server_config). The engine's own sizes are in ``service.engine.defaults``."""

from __future__ import annotations

#: The most passes one DiscoverCircuit may run unless configured (config ``locate_max_passes``).
DEFAULT_LOCATE_MAX_PASSES = 2000

#: The largest message the server accepts and sends unless configured.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024

#: Floats of logits one scoring forward may hold at once (rows × positions × vocabulary, ~256 MB):
#: the checks' token statistics and the completions API's echoed prompts take as many rows per
#: forward as fit.
LOGIT_BUDGET = 1 << 26

#: The weight dtypes a hosted model may be loaded in.
DTYPE_NAMES = ("float32", "bfloat16", "float16")
