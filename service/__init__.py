"""Scalpel's service side: the command line now; the gRPC server, registry and checks later."""
