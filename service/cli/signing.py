"""The audit chain's signing key and checkpoints on the command line.

``scalpel audit pubkey`` and ``scalpel audit rotate-key`` act on this host's key file (no server);
``scalpel audit checkpoint`` writes a signed head the server verified to a file kept elsewhere,
and ``scalpel audit verify --checkpoint FILE`` checks a later chain against it."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from service.cli.errors import UsageError

if TYPE_CHECKING:
    from service.registry.audit_keys import SignedHead

CHECKPOINT_FIELDS = ("seq", "hash", "key_id", "signature", "public_key")


def audit_pubkey(args: argparse.Namespace) -> int:
    from service.registry.audit_keys import KEY_ENV, encode_public, key_file, load_keyring

    keyring = load_keyring()
    assert keyring.signer is not None
    shown = {
        "key_id": keyring.key_id,
        "public_key": encode_public(keyring.signer.public_key()),
        "file": f"${KEY_ENV}" if os.environ.get(KEY_ENV) else str(key_file()),
    }
    print(json.dumps(shown) if args.json else "\n".join(f"{name}: {value}" for name, value in shown.items()))
    return 0


def audit_rotate_key(args: argparse.Namespace) -> int:
    from service.registry.audit_keys import rotate

    old, new = rotate()
    shown = {"retired": old, "key_id": new}
    print(
        json.dumps(shown)
        if args.json
        else f"key {old} retired (its public key still verifies old heads); new key {new}"
    )
    return 0


def write_checkpoint(head: SignedHead, path: Path) -> None:
    path.write_text(json.dumps({name: getattr(head, name) for name in CHECKPOINT_FIELDS}, indent=1) + "\n")


def read_checkpoint(path: Path) -> SignedHead:
    """The signed head in ``path``; UsageError naming the file when it is not one."""
    from service.registry.audit_keys import SignedHead

    try:
        data = json.loads(path.read_text())
        head = SignedHead(*(data[name] for name in CHECKPOINT_FIELDS))
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{path} is not a checkpoint `scalpel audit checkpoint` wrote ({exc})") from None
    if not isinstance(head.seq, int) or not all(isinstance(getattr(head, n), str) for n in CHECKPOINT_FIELDS[1:]):
        raise UsageError(f"{path} is not a checkpoint `scalpel audit checkpoint` wrote (a field has the wrong type)")
    return head
