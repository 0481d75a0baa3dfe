"""The ``scalpel`` command: local commands (serve, db, keys, toyworld, rome/memit eval, the demo and
the walkthrough) in :mod:`service.cli.main`, the remote ones over gRPC in :mod:`service.cli.remote`,
how check runs print (:mod:`service.cli.checks`) and render as a page
(:mod:`service.cli.check_report`), and one-line errors (:mod:`service.cli.errors`).

Importing this package is free: the client commands never pay for torch and transformers."""
