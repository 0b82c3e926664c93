"""C2SP signed notes and tlog checkpoints with Ed25519 keys.

A checkpoint body is `<origin>\\n<size>\\n<base64 root>\\n`; the signed note adds a
blank line and one `— <key name> <base64(key id || signature)>` line per signature.
Key ids are the first four bytes of SHA-256(name || 0x0A || 0x01 || public key).
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

ALG_ED25519 = 0x01
SIG_PREFIX = "\u2014 "  # em dash and a space
_NAME = re.compile(r"^[^\s+]+$")


class NoteError(ValueError):
    """A note, checkpoint or key that cannot be read or does not verify."""


def key_id(name: str, public: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([ALG_ED25519]) + public).digest()[:4]


@dataclass(frozen=True)
class Verifier:
    name: str
    public: bytes

    @property
    def id(self) -> bytes:
        return key_id(self.name, self.public)

    def encode(self) -> str:
        """`<name>+<hex id>+<base64(0x01 || public key)>`, the verifier key string."""
        blob = base64.b64encode(bytes([ALG_ED25519]) + self.public).decode()
        return f"{self.name}+{self.id.hex()}+{blob}"

    @classmethod
    def decode(cls, text: str) -> Verifier:
        parts = text.strip().split("+", 2)
        if len(parts) != 3 or not _NAME.match(parts[0]):
            raise NoteError("a verifier key looks like <name>+<8 hex digits>+<base64>")
        name, hexid, blob = parts
        try:
            raw = base64.b64decode(blob, validate=True)
        except ValueError:
            raise NoteError("verifier key: the key part is not base64") from None
        if len(raw) != 33 or raw[0] != ALG_ED25519:
            raise NoteError("verifier key: not an Ed25519 key")
        v = cls(name, raw[1:])
        if v.id.hex() != hexid.lower():
            raise NoteError("verifier key: the key id does not match the key")
        return v

    def verify(self, body: bytes, signature: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.public).verify(signature, body)
        except InvalidSignature:
            return False
        return True


class Signer:
    def __init__(self, name: str, private: Ed25519PrivateKey) -> None:
        if not _NAME.match(name):
            raise NoteError(f"key name {name!r} must have no spaces or '+'")
        self.name = name
        self._key = private
        public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.verifier = Verifier(name, public)

    @classmethod
    def generate(cls, name: str) -> Signer:
        return cls(name, Ed25519PrivateKey.generate())

    def encode(self) -> str:
        """`PRIVATE+KEY+<name>+<hex id>+<base64(0x01 || seed)>`: keep it secret."""
        seed = self._key.private_bytes_raw()
        blob = base64.b64encode(bytes([ALG_ED25519]) + seed).decode()
        return f"PRIVATE+KEY+{self.name}+{self.verifier.id.hex()}+{blob}"

    @classmethod
    def decode(cls, text: str) -> Signer:
        parts = text.strip().split("+", 4)
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
            raise NoteError("a signer key looks like PRIVATE+KEY+<name>+<hex id>+<base64>")
        try:
            raw = base64.b64decode(parts[4], validate=True)
        except ValueError:
            raise NoteError("signer key: the key part is not base64") from None
        if len(raw) != 33 or raw[0] != ALG_ED25519:
            raise NoteError("signer key: not an Ed25519 key")
        signer = cls(parts[2], Ed25519PrivateKey.from_private_bytes(raw[1:]))
        if signer.verifier.id.hex() != parts[3].lower():
            raise NoteError("signer key: the key id does not match the key")
        return signer

    def __repr__(self) -> str:
        return f"Signer({self.name!r}, id={self.verifier.id.hex()})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Signer) and other.verifier == self.verifier

    def __hash__(self) -> int:
        return hash(self.verifier)

    def sign(self, body: str) -> str:
        """The signed note: body, blank line, one signature line."""
        return sign_note(body, [self])

    def signature_line(self, body: str) -> str:
        if not body.endswith("\n"):
            raise NoteError("a note body ends with a newline")
        sig = self._key.sign(body.encode())
        return f"{SIG_PREFIX}{self.name} {base64.b64encode(self.verifier.id + sig).decode()}"


def sign_note(body: str, signers: list[Signer]) -> str:
    """The signed note: body, blank line, one signature line per signer, in their order
    (a key rotation's checkpoint carries the old key's signature, then the new key's)."""
    if not signers:
        raise NoteError("a note needs at least one signer")
    lines = "".join(s.signature_line(body) + "\n" for s in signers)
    return f"{body}\n{lines}"


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    text: str  # the whole signed note, exactly as signed

    @property
    def body(self) -> str:
        return checkpoint_body(self.origin, self.size, self.root)


def checkpoint_body(origin: str, size: int, root: bytes) -> str:
    return f"{origin}\n{size}\n{base64.b64encode(root).decode()}\n"


_SIG_LIKE = re.compile(r"^(?:\u2014|\u2013|--?)\s+(\S+)\s+(\S+)\s*$")


def tidy_note(text: str) -> str:
    """A signed note as a person may have copied it (from a PDF, a ticket, an e-mail):
    Windows line ends, spaces around lines, a lost blank line before the signature lines,
    an en dash or hyphens instead of the em dash. Returns the note as it was signed; the
    signature still decides whether it is genuine."""
    lines = [ln.strip() for ln in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    while lines and not lines[0]:
        lines.pop(0)
    body: list[str] = []
    sigs: list[str] = []
    for ln in lines:
        m = _SIG_LIKE.match(ln)
        if m and len(body) >= 3:
            sigs.append(f"{SIG_PREFIX}{m.group(1)} {m.group(2)}")
        elif ln and not sigs:
            body.append(ln)
    if not sigs:
        return text
    return "\n".join(body) + "\n\n" + "\n".join(sigs) + "\n"


def parse_checkpoint(text: str, verifiers: list[Verifier]) -> Checkpoint:
    """Parse a signed checkpoint; it must carry a valid signature by one of `verifiers`."""
    cp, signed = open_checkpoint(text, verifiers)
    if not signed:
        raise NoteError("no signature by a trusted key")
    return cp


def signature_keys(text: str) -> list[tuple[str, bytes]]:
    """The (key name, key id) of each signature line of a note, checked or not."""
    _, sep, sigs = text.partition("\n\n")
    out: list[tuple[str, bytes]] = []
    for line in sigs.split("\n") if sep else []:
        if not line.startswith(SIG_PREFIX):
            continue
        name, _, blob = line[len(SIG_PREFIX):].rpartition(" ")
        try:
            raw = base64.b64decode(blob, validate=True)
        except ValueError:
            continue
        if len(raw) >= 5:
            out.append((name, raw[:4]))
    return out


def open_checkpoint(text: str, verifiers: list[Verifier]) -> tuple[Checkpoint, list[Verifier]]:
    """Parse a signed checkpoint and check each signature by a key among `verifiers`:
    the checkpoint and the keys whose signatures are valid, in the note's order (possibly
    none). Signatures by other keys are ignored, as C2SP says; a bad signature by a known
    key is an error."""
    body, sep, sigs = text.partition("\n\n")
    if not sep or not sigs.endswith("\n"):
        raise NoteError("not a signed note: no blank line before the signatures")
    body += "\n"
    lines = body.split("\n")[:-1]
    if len(lines) < 3:
        raise NoteError("a checkpoint body has an origin, a size and a root hash")
    origin, size_text, root_text = lines[:3]
    if not size_text.isdigit() or (size_text != "0" and size_text.startswith("0")):
        raise NoteError(f"checkpoint size {size_text!r} is not a decimal number")
    try:
        root = base64.b64decode(root_text, validate=True)
    except ValueError:
        raise NoteError("checkpoint root hash is not base64") from None
    if len(root) != 32:
        raise NoteError("checkpoint root hash is not 32 bytes")
    known = {(v.name, v.id): v for v in verifiers}
    signed: list[Verifier] = []
    for line in sigs[:-1].split("\n"):
        if not line.startswith(SIG_PREFIX):
            raise NoteError("malformed signature line")
        name, _, blob = line[len(SIG_PREFIX):].rpartition(" ")
        try:
            raw = base64.b64decode(blob, validate=True)
        except ValueError:
            raise NoteError("signature is not base64") from None
        if len(raw) < 5:
            raise NoteError("signature too short")
        v = known.get((name, raw[:4]))
        if v is None:
            continue
        if not v.verify(body.encode(), raw[4:]):
            raise NoteError(f"bad signature by {name} (key {raw[:4].hex()})")
        if v not in signed:
            signed.append(v)
    return Checkpoint(origin, int(size_text), root, text), signed
