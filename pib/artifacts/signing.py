"""Ed25519 signing of artifact metadata.

Key files are one line of text, so they are easy to pass around in CI
secrets and environment variables:

    private key:  "pib-ed25519-private:" + base64(32-byte seed)   (mode 0600)
    public key:   "pib-ed25519:" + base64(32-byte public key)

A key id is the first 16 hex digits of the SHA-256 of the raw public key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from pib.errors import ConfigError, PibError, Reason, VerifyError
from pib.fsutil import read_small, write_atomic

PRIVATE_PREFIX = "pib-ed25519-private:"
PUBLIC_PREFIX = "pib-ed25519:"
KEY_FILE_LIMIT = 4096  # a key file is one line of about 60 bytes


def key_id(public_raw: bytes) -> str:
    return hashlib.sha256(public_raw).hexdigest()[:16]


@dataclass(frozen=True)
class PublicKey:
    raw: bytes

    @property
    def id(self) -> str:
        return key_id(self.raw)

    def text(self) -> str:
        return PUBLIC_PREFIX + base64.b64encode(self.raw).decode()


class Signer:
    """A loaded private key."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._key = private
        self.public = PublicKey(private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))

    @property
    def key_id(self) -> str:
        return self.public.id

    def sign(self, data: bytes) -> str:
        return base64.b64encode(self._key.sign(data)).decode()


def generate_keypair(private_path: Path, public_path: Path) -> PublicKey:
    """Write a new key pair; refuses to overwrite an existing private key."""
    if private_path.exists():
        raise PibError(f"{private_path} already exists", reason=Reason.USAGE,
                       hint="remove it first or choose another path; an existing key is never overwritten")
    private = Ed25519PrivateKey.generate()
    seed = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    signer = Signer(private)
    for path in (private_path, public_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(private_path, PRIVATE_PREFIX + base64.b64encode(seed).decode() + "\n", mode=0o600)
    write_atomic(public_path, signer.public.text() + "\n")
    return signer.public


def _key_text(path_or_value: str | Path, prefix: str, what: str, hint: str) -> tuple[str, str]:
    """The key text, given either itself (e.g. an env var's value) or the file holding it; and its source."""
    text = str(path_or_value).strip()
    if text.startswith(prefix):
        return text, f"the {what} value"
    path = Path(text)
    try:
        # A key file is a line of text; a device, fifo or huge file is refused, not read without end.
        return read_small(path, KEY_FILE_LIMIT).decode("ascii").strip(), str(path)
    except ValueError as exc:  # a NUL in the path, or not ASCII
        raise ConfigError(f"cannot read {what} {path!r}: {exc}", hint=hint) from exc
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}", hint=hint) from exc


def load_signer(path_or_value: str | Path) -> Signer:
    """Load a private key from a file path, or from the key text itself (e.g. an env var's value)."""
    text, source = _key_text(path_or_value, PRIVATE_PREFIX, "signing key",
                             "create one with `pib keygen` or point the setting at the right file")
    seed = _decode(text, PRIVATE_PREFIX, source)
    return Signer(Ed25519PrivateKey.from_private_bytes(seed))


def load_public_key(path_or_value: str | Path) -> PublicKey:
    text, source = _key_text(path_or_value, PUBLIC_PREFIX, "trusted public key",
                             "check the trusted key list; `pib keygen` writes NAME.pub")
    return PublicKey(_decode(text, PUBLIC_PREFIX, source))


def _decode(text: str, prefix: str, source: str) -> bytes:
    if not text.startswith(prefix):
        raise ConfigError(f"{source} is not a pib key (expected it to start with {prefix!r})",
                          hint="use a file written by `pib keygen`")
    try:
        raw = base64.b64decode(text[len(prefix):], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ConfigError(f"{source}: key is not valid base64", hint="use a file written by `pib keygen`") from exc
    if len(raw) != 32:
        raise ConfigError(f"{source}: key has {len(raw)} bytes, expected 32", hint="use a file written by `pib keygen`")
    return raw


def verify(data: bytes, signature: str, public_keys: Iterable[PublicKey]) -> PublicKey:
    """Return the trusted key that signed `data`, or raise VerifyError."""
    try:
        sig = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise VerifyError("signature is not valid base64", hint="the artifact metadata is corrupt") from exc
    keys = list(public_keys)
    if not keys:
        raise VerifyError("no trusted public keys are configured, so no artifact can be verified",
                          hint="add the publisher's public key to the trusted keys in pib.toml")
    for key in keys:
        try:
            Ed25519PublicKey.from_public_bytes(key.raw).verify(sig, data)
        except InvalidSignature:
            continue
        return key
    raise VerifyError("signature does not verify with any trusted key",
                      hint="the artifact was signed by an untrusted key or altered; it will be rebuilt locally")
