"""Ed25519 keys and their files. Sans-IO: documents in, documents out; `ota.cli` does the
file I/O (and creates secret key files with mode 0600).

A key is named by its **key id**: the first 8 bytes of the sha256 of its 32-byte public
key, as 16 lowercase hex digits. Both key files are small JSON objects, keys in hex:

    NAME.pub  {"key_id": "…", "public_key": "<64 hex>", "name": "release-2025"}
    NAME.key  {"key_id": "…", "public_key": "<64 hex>", "secret_key": "<64 hex>", "name": …}

`secret_key` is the 32-byte Ed25519 seed (RFC 8032's private key). A `.pub` document is
exactly one entry of a trust root's `keys` list (see `ota.trust`). Loading either file
checks that the key id matches the public key, and a secret key that its public key matches
the seed, so a file edited by hand or mixed up with another is refused, not trusted.
`name` is optional and only for people.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import nacl.exceptions
import nacl.signing

__all__ = ["KeyFileError", "PublicKey", "SecretKey", "key_id_of"]

KEY_BYTES = 32
MAX_KEY_FILE_BYTES = 4096
_PUBLIC_FIELDS = frozenset({"key_id", "public_key", "name"})
_SECRET_FIELDS = _PUBLIC_FIELDS | {"secret_key"}


class KeyFileError(ValueError):
    """A key file that is not what it should be (a local configuration error)."""


def key_id_of(public_key: bytes) -> str:
    """The key id of a raw 32-byte Ed25519 public key."""
    return hashlib.sha256(public_key).digest()[:8].hex()


def _hex32(doc: dict[str, Any], name: str) -> bytes:
    value = doc.get(name)
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != KEY_BYTES or value != raw.hex():
        raise KeyFileError(f"{name} must be {KEY_BYTES} bytes as {2 * KEY_BYTES} lowercase hex")
    return raw


def _object(data: bytes, allowed: frozenset[str], what: str) -> dict[str, Any]:
    if len(data) > MAX_KEY_FILE_BYTES:
        raise KeyFileError(f"{what} is larger than {MAX_KEY_FILE_BYTES} bytes")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"{what} is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise KeyFileError(f"{what} is not a JSON object")
    unknown = doc.keys() - allowed
    if unknown:
        raise KeyFileError(f"{what} has unknown fields {sorted(unknown)}")
    name = doc.get("name")
    if name is not None and not isinstance(name, str):
        raise KeyFileError(f"{what}: name is not text")
    return doc


@dataclass(frozen=True)
class PublicKey:
    """An Ed25519 public key, its key id and an optional name for people."""

    public_key: bytes = field(repr=False)
    name: str | None = None
    key_id: str = field(init=False)

    def __post_init__(self) -> None:
        if type(self.public_key) is not bytes or len(self.public_key) != KEY_BYTES:
            raise KeyFileError(f"a public key is {KEY_BYTES} bytes")
        object.__setattr__(self, "key_id", key_id_of(self.public_key))

    def verify(self, message: bytes, signature: bytes) -> bool:
        """Whether `signature` is this key's Ed25519 signature of `message`."""
        try:
            nacl.signing.VerifyKey(self.public_key).verify(message, signature)
        except (nacl.exceptions.CryptoError, ValueError, TypeError):
            return False
        return True

    def to_document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"key_id": self.key_id, "public_key": self.public_key.hex()}
        if self.name is not None:
            doc["name"] = self.name
        return doc

    def to_json(self) -> bytes:
        return (json.dumps(self.to_document(), indent=2) + "\n").encode()

    @classmethod
    def from_document(cls, doc: dict[str, Any], what: str = "public key") -> PublicKey:
        key = cls(_hex32(doc, "public_key"), doc.get("name"))
        if doc.get("key_id") != key.key_id:
            raise KeyFileError(f"{what}: key_id {doc.get('key_id')!r} does not match the key")
        return key

    @classmethod
    def from_json(cls, data: bytes) -> PublicKey:
        return cls.from_document(_object(data, _PUBLIC_FIELDS, "public key file"))


@dataclass(frozen=True)
class SecretKey:
    """An Ed25519 signing key (its 32-byte seed) and an optional name."""

    seed: bytes = field(repr=False)
    name: str | None = None

    def __post_init__(self) -> None:
        if type(self.seed) is not bytes or len(self.seed) != KEY_BYTES:
            raise KeyFileError(f"a secret key is a {KEY_BYTES}-byte seed")

    @classmethod
    def generate(cls, name: str | None = None) -> SecretKey:
        return cls(bytes(nacl.signing.SigningKey.generate()), name)

    @property
    def public(self) -> PublicKey:
        verify_key = nacl.signing.SigningKey(self.seed).verify_key
        return PublicKey(bytes(verify_key), self.name)

    @property
    def key_id(self) -> str:
        return self.public.key_id

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of `message`."""
        return nacl.signing.SigningKey(self.seed).sign(message).signature

    def to_json(self) -> bytes:
        doc = self.public.to_document()
        doc["secret_key"] = self.seed.hex()
        return (json.dumps(doc, indent=2) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes) -> SecretKey:
        doc = _object(data, _SECRET_FIELDS, "secret key file")
        key = cls(_hex32(doc, "secret_key"), doc.get("name"))
        public = key.public
        if doc.get("public_key") != public.public_key.hex() or doc.get("key_id") != public.key_id:
            raise KeyFileError("secret key file: public_key or key_id does not match the seed")
        return key
