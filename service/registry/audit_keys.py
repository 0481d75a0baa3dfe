"""The audit chain's signing key: Ed25519, held outside the database.

Every appended event is signed: the signature covers ``seq:hash`` of the event, and since each
hash covers the previous one, a valid signature on the head covers the whole chain. Whoever can
only write the database cannot make a valid signature, so a forged tail, a rewritten event or a
moved head fails verification. A *truncated* chain ends on an older head that was genuinely
signed; it is caught by the **witness** (the newest head this host signed, per chain, in a file
beside the key) and by the checkpoints an operator keeps elsewhere (``scalpel audit checkpoint``).

Where the key comes from, first match wins:

1. ``$SCALPEL_AUDIT_KEY``: the private key as PEM text (replicas share it through a secret);
2. ``$SCALPEL_AUDIT_KEY_FILE``, or the configured ``audit_key_file``;
3. ``<data dir>.keys/audit_ed25519.pem`` (created on first use, mode 0600, as an SSH host key is).

Old public keys keep verifying old heads after a rotation (``scalpel audit rotate-key``): they are
kept as ``retired/<key id>.pub`` beside the key file, and ``$SCALPEL_AUDIT_TRUSTED_KEYS`` adds
more (comma-separated base64 raw public keys).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from service.db.engine import data_dir
from service.registry.errors import RegistryError

KEY_ENV = "SCALPEL_AUDIT_KEY"
KEY_FILE_ENV = "SCALPEL_AUDIT_KEY_FILE"
TRUSTED_ENV = "SCALPEL_AUDIT_TRUSTED_KEYS"
KEY_NAME = "audit_ed25519.pem"
WITNESS_NAME = "audit_witness.json"

#: Chains a witness file remembers (one per database it has signed for), newest kept.
WITNESS_CHAINS = 256

_DOMAIN = b"scalpel-audit-head/v1\n"

log = logging.getLogger("scalpel.audit")


class AuditKeyError(RegistryError):
    """The signing key cannot be read or made; the message names the file or variable."""

    code = "FAILED_PRECONDITION"


def default_key_file() -> Path:
    """``<data dir>.keys/audit_ed25519.pem``: beside the data directory, never inside the database."""
    directory = data_dir()
    return directory.parent / f"{directory.name}.keys" / KEY_NAME


def public_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey) -> str:
    """The first 16 hex digits of the SHA-256 of the raw public key."""
    return hashlib.sha256(public_bytes(key)).hexdigest()[:16]


def encode_public(key: Ed25519PublicKey) -> str:
    return base64.b64encode(public_bytes(key)).decode()


def decode_public(text: str) -> Ed25519PublicKey:
    """A base64 raw Ed25519 public key; ValueError naming the form otherwise."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise ValueError(f"expected a base64 Ed25519 public key (32 bytes), got {text.strip()[:60]!r}") from exc


def signed_message(seq: int, digest: str) -> bytes:
    return _DOMAIN + f"{seq}:{digest}".encode()


@dataclass(frozen=True)
class SignedHead:
    """A head as a checkpoint holds it: enough to check its signature with no database."""

    seq: int
    hash: str
    key_id: str
    signature: str
    public_key: str

    def problem(self) -> str:
        """ "" when the signature is the named public key's over ``seq:hash``; else what is wrong."""
        try:
            public = decode_public(self.public_key)
        except ValueError as exc:
            return str(exc)
        if key_id(public) != self.key_id:
            return f"the public key's id is {key_id(public)}, the checkpoint names {self.key_id}"
        return "" if _valid(public, self.signature, self.seq, self.hash) else "the signature does not match"


def _valid(public: Ed25519PublicKey, signature: str, seq: int, digest: str) -> bool:
    try:
        public.verify(base64.b64decode(signature, validate=True), signed_message(seq, digest))
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass
class AuditKeyring:
    """The key that signs new events (None: this process only verifies) and the public keys that
    verify heads (the signer's own, retired ones, and any configured as trusted)."""

    signer: Ed25519PrivateKey | None
    trusted: dict[str, Ed25519PublicKey]
    witness_file: Path | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    #: (chain, seq, hash) of the last head this process committed: a write on top of it needs no
    #: look-up (the head is this process's own signed event), only a write after another's does.
    _committed: tuple[str, int, str] | None = field(default=None, repr=False)

    def own_head(self, seq: int, digest: str) -> str | None:
        """The chain id if ``seq:digest`` is the head this process last committed, else None."""
        committed = self._committed
        return committed[0] if committed is not None and committed[1:] == (seq, digest) else None

    @property
    def key_id(self) -> str:
        return key_id(self.signer.public_key()) if self.signer else ""

    def sign(self, seq: int, digest: str) -> tuple[str, str]:
        """(key id, base64 signature) of the head ``seq:digest``."""
        assert self.signer is not None
        return self.key_id, base64.b64encode(self.signer.sign(signed_message(seq, digest))).decode()

    def head_problem(self, seq: int, digest: str, signer_id: str | None, signature: str | None) -> str:
        """ "" when the head's signature is valid under a trusted key; else why not."""
        if not signature or not signer_id:
            return f"event {seq} (the head) is not signed"
        public = self.trusted.get(signer_id)
        if public is None:
            return (
                f"event {seq} (the head) is signed by key {signer_id}, which this server does not trust (replicas "
                f"share one signing key, or list each other's public keys in ${TRUSTED_ENV})"
            )
        if not _valid(public, signature, seq, digest):
            return f"event {seq} (the head) has a signature that does not match its hash (key {signer_id})"
        return ""

    def public_key_of(self, signer_id: str) -> str:
        """The trusted public key with id ``signer_id``, base64 ("" if none is trusted)."""
        public = self.trusted.get(signer_id)
        return encode_public(public) if public is not None else ""

    def signed_head(self, seq: int, digest: str, signer_id: str, signature: str) -> SignedHead:
        return SignedHead(seq, digest, signer_id, signature, encode_public(self.trusted[signer_id]))

    # -- the witness: the newest head this host signed, per chain (keyed by the chain's first hash)

    def witness(self, chain: str) -> tuple[int, str] | None:
        """The newest head of ``chain`` this host committed (None: none, or no witness file to read)."""
        if self.witness_file is None:
            return None
        try:
            with self._locked_witness() as heads:
                found = heads.get(chain)
        except OSError as exc:
            log.warning("audit witness %s unreadable, truncation goes unchecked here: %s", self.witness_file, exc)
            return None
        return (found[0], found[1]) if found else None

    def remember(self, chain: str, seq: int, digest: str) -> None:
        """Record ``seq:digest`` as the newest head of ``chain`` this host committed (never lowers
        it). Runs after the commit: a file that cannot be written is logged, not raised."""
        self._committed = (chain, seq, digest)
        if self.witness_file is None:
            return
        try:
            with self._locked_witness(write=True) as heads:
                known = heads.get(chain)
                if known is None or known[0] < seq:
                    heads.pop(chain, None)
                    heads[chain] = [seq, digest]
                    while len(heads) > WITNESS_CHAINS:
                        heads.pop(next(iter(heads)))
        except OSError as exc:
            log.warning(
                "audit witness %s not written (head %d kept in the database only): %s", self.witness_file, seq, exc
            )

    @contextlib.contextmanager
    def _locked_witness(self, write: bool = False) -> Iterator[dict[str, list]]:
        """The witness file's contents under an exclusive lock (threads and processes alike)."""
        assert self.witness_file is not None
        self.witness_file.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, open(self.witness_file.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                heads = json.loads(self.witness_file.read_text()) if self.witness_file.exists() else {}
            except ValueError:
                heads = {}
            yield heads
            if write:
                spare = self.witness_file.with_suffix(".tmp")
                spare.write_text(json.dumps(heads))
                os.replace(spare, self.witness_file)


def _read_private(pem: bytes, where: str) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise AuditKeyError(f"{where} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise AuditKeyError(f"{where} holds a {type(key).__name__}; the audit chain needs an Ed25519 key")
    return key


def private_pem(key: Ed25519PrivateKey) -> bytes:
    plain = serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, plain)


def _create(path: Path) -> Ed25519PrivateKey:
    """A new key at ``path`` (mode 0600); if another process made one first, that one."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = Ed25519PrivateKey.generate()
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_private(path.read_bytes(), str(path))
    with os.fdopen(descriptor, "wb") as out:
        out.write(private_pem(key))
    return key


def key_file(configured: str | Path | None = None) -> Path:
    """The key file in force: ``$SCALPEL_AUDIT_KEY_FILE``, else ``configured``, else the default."""
    return Path(os.environ.get(KEY_FILE_ENV) or configured or default_key_file())


def load_keyring(configured: str | Path | None = None, create: bool = True) -> AuditKeyring:
    """The keyring in force (see the module docstring); a missing key file is created when
    ``create``, else the keyring only verifies."""
    path = key_file(configured)
    if os.environ.get(KEY_ENV):
        signer: Ed25519PrivateKey | None = _read_private(os.environ[KEY_ENV].encode(), f"${KEY_ENV}")
    elif path.exists():
        signer = _read_private(path.read_bytes(), str(path))
    elif create:
        signer = _create(path)
    else:
        signer = None
    trusted = {key_id(key): key for key in _retired(path)}
    for text in filter(None, (part.strip() for part in os.environ.get(TRUSTED_ENV, "").split(","))):
        try:
            public = decode_public(text)
        except ValueError as exc:
            raise AuditKeyError(f"${TRUSTED_ENV}: {exc}") from None
        trusted[key_id(public)] = public
    if signer is not None:
        trusted[key_id(signer.public_key())] = signer.public_key()
    return AuditKeyring(signer, trusted, path.parent / WITNESS_NAME)


def _retired(path: Path) -> list[Ed25519PublicKey]:
    folder = path.parent / "retired"
    keys = []
    for public in sorted(folder.glob("*.pub")) if folder.is_dir() else []:
        try:
            keys.append(decode_public(public.read_text()))
        except ValueError as exc:
            raise AuditKeyError(f"{public}: {exc}") from None
    return keys


def rotate(configured: str | Path | None = None) -> tuple[str, str]:
    """Retire the key file's key (its public key stays trusted) and make a new one: (old id, new id).
    A key given in ``$SCALPEL_AUDIT_KEY`` is rotated by changing the variable, not here."""
    if os.environ.get(KEY_ENV):
        raise AuditKeyError(f"the key comes from ${KEY_ENV}: rotate it there (keep the old public key trusted)")
    path = key_file(configured)
    if not path.exists():
        raise AuditKeyError(f"no key at {path} to rotate")
    old = _read_private(path.read_bytes(), str(path)).public_key()
    retired = path.parent / "retired"
    retired.mkdir(exist_ok=True)
    (retired / f"{key_id(old)}.pub").write_text(encode_public(old) + "\n")
    path.unlink()
    new = _create(path)
    return key_id(old), key_id(new.public_key())
