"""Scalpel's service side: the gRPC server (server, api), hosting (hosting), the serving engine
(engine), the registry and database (registry, db), checks, the gateway, the CLI (cli)."""
