"""The named choices of the kit's public functions, in a module that imports nothing heavy: the
``scalpel`` CLI builds its parser from them without loading torch."""

from __future__ import annotations

#: Attribution metrics (``editors.locate``).
METRICS = ("logit_diff", "answer_logprob", "tokens_logprob")
#: What attribution ranks (``editors.locate``); ``features``: an SAE's features and its error term.
COMPONENT_KINDS = ("heads", "mlps", "neurons", "features")
#: ``noising``: the corrupted activation patched into the clean run (what the behaviour needs);
#: ``denoising``: the clean activation patched into the corrupted run (what restores it).
DIRECTIONS = ("noising", "denoising")
#: The edit a discovered circuit proposes (``editors.circuits``).
PROPOSALS = ("ablation", "directional", "feature_ablation")
#: What a circuit is made of: heads, whole MLPs, an SAE's features and its error term (nodes of a
#: kind left out are never ablated).
NODE_KINDS = ("heads", "mlps", "features")
#: The node kinds a discovery looks at unless told otherwise.
DEFAULT_NODE_KINDS = ("heads", "mlps")
#: What DiscoverCircuit's kinds may name: node kinds, or ``edges`` alone (``editors.edges``).
CIRCUIT_KINDS = (*NODE_KINDS, "edges")
#: What a version exports as (``service.export``).
EXPORT_FORMATS = ("merged", "lora", "gguf", "steering")
#: The toy world's locate tasks (``editors.toyworld.locate_pairs``).
LOCATE_TASKS = ("induction", "capitals", "sentiment")
