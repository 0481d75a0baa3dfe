"""The serving engine: one scheduler per hosted model, every decode step one forward over all
active rows, each row under its own version's compiled stack.

It imports the surgery kit (:mod:`editors`) and its own modules only: nothing of the registry, the
API or the checks (``tests/test_layout.py`` says so). A request's path::

    Generate ─► validate (prompt length, sampling, version → compiled stack) ─► waiting queue
                                                                                  │
     scheduler loop (scheduler), between two forwards:                            ▼
       1. run one queued job (Score, a CompareVersions chunk; check-run batches at background priority)
       2. admit waiting streams ─► prefix cache (prefix_cache, shared_prefixes): stored starts skip
                                   their forward
                                ─► their prefill chunk (left-padded, per-row stacks): inside the
                                   decode forward while rows decode (ragged), alone otherwise
                                ─► first token sampled (sampling); rows written into the batch's
                                   free rows or merged into it (decode_batch, growing_cache)
       3. drop finished / cancelled rows ─► ONE decode forward over every active row ─► per-row
          sampling ─► each stream's queue (stream_reading, stream_timing, detokenizer)
                                                                                  │
    Generate (event loop) ◄── tokens as they are made ◄───────────────────────────┘

By default the generation streams' scheduler runs in an engine process of the model's own
(process), forked from a fork server that imported torch once (forkserver), over the serving
process's weights; its thread count (intra_op) and start-up heap (startup_heap) are set there.
``event_loop`` runs the ``grpc.aio`` loop the streams wait on. Default sizes: ``defaults``.
"""
