"""Offline verification of a receipt: signed checkpoint plus inclusion proof.

A receipt's ``evidence_hash`` is the ``entry_hash`` of the ledger entry that
recorded it. The kernel keeps an RFC 9162 Merkle tree over its entries (leaf
``i`` = the 32 raw bytes of entry ``i``'s ``entry_hash``; leaf hash
``SHA-256(0x00 || data)``, node ``SHA-256(0x01 || left || right)``) and signs
checkpoints of it as C2SP ``tlog-checkpoint`` signed notes with Ed25519.
:func:`verify_receipt` needs nothing but the receipt, the proof answered by
``GET /v1/proofs/inclusion`` (``KernelsClient.verify_receipt`` fetches it)
and the log's verifier key: it checks the note's
signature, then recomputes the tree head from the leaf and the proof (RFC
9162 §2.1.3.2) and compares it with the signed one. Formats are parsed once,
into types (:class:`VerifierKey`, :class:`SignedNote`, :class:`Checkpoint`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .errors import VerificationError
from .models import InclusionProof, KernelReceipt

#: The algorithm byte of an Ed25519 key in the signed-note formats.
ALG_ED25519 = 0x01
#: The em dash that starts a signature line.
SIGNATURE_PREFIX = "\u2014 "

_DECIMAL = re.compile(r"^(0|[1-9][0-9]{0,19})$")
_HEX32 = re.compile(r"^[0-9a-fA-F]{64}$")


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as e:
        raise VerificationError(f"{what} is not base64") from e


def _hex32(text: Any, what: str) -> bytes:
    if not isinstance(text, str) or not _HEX32.match(text):
        raise VerificationError(f"{what} is not 64 hex digits")
    return bytes.fromhex(text)


def key_id(name: str, public_key: bytes) -> bytes:
    """The 4-byte key id: first bytes of SHA-256(name || "\\n" || 0x01 || key)."""
    return hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([ALG_ED25519]) + public_key).digest()[:4]


@dataclass(frozen=True)
class VerifierKey:
    """A parsed verifier key ``<name>+<8 hex key id>+<base64(0x01 || key)>``."""

    name: str
    key_id: bytes
    public_key: bytes

    @classmethod
    def parse(cls, text: str) -> "VerifierKey":
        """Parses and checks a verifier key (its key id must match its key)."""
        # The base64 key may itself contain '+': split at the first two only.
        name, _, rest = text.strip().partition("+")
        hash_hex, _, key_b64 = rest.partition("+")
        if not key_b64:
            raise VerificationError("a verifier key is <name>+<key id>+<key>")
        if not name or any(c.isspace() for c in name):
            raise VerificationError("the verifier key's name is empty or has spaces")
        if not re.fullmatch(r"[0-9a-f]{8}", hash_hex):
            raise VerificationError("the verifier key's id is not 8 lowercase hex digits")
        raw = _b64(key_b64, "the verifier key")
        if len(raw) != 33 or raw[0] != ALG_ED25519:
            raise VerificationError("the verifier key is not an Ed25519 key (0x01 || 32 bytes)")
        public_key = raw[1:]
        if key_id(name, public_key).hex() != hash_hex:
            raise VerificationError("the verifier key's id does not match its name and key")
        return cls(name=name, key_id=bytes.fromhex(hash_hex), public_key=public_key)

    def verifies(self, message: bytes, signature: bytes) -> bool:
        """Whether ``signature`` is this key's Ed25519 signature of ``message``."""
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, message)
            return True
        except InvalidSignature:
            return False


@dataclass(frozen=True)
class NoteSignature:
    """One signature line of a signed note."""

    name: str
    key_id: bytes
    signature: bytes


@dataclass(frozen=True)
class SignedNote:
    """A C2SP signed note: its text (what is signed) and its signature lines."""

    text: str
    signatures: tuple[NoteSignature, ...]

    @classmethod
    def parse(cls, note: str) -> "SignedNote":
        """Splits a note at its last blank line and parses the signature lines."""
        if not isinstance(note, str) or not note.endswith("\n"):
            raise VerificationError("a signed note ends with a newline")
        split = note.rfind("\n\n")
        if split < 0:
            raise VerificationError("the note has no signature block")
        text, block = note[: split + 1], note[split + 2 :]
        signatures = []
        for line in block.split("\n")[:-1]:
            if not line.startswith(SIGNATURE_PREFIX):
                raise VerificationError(f"not a signature line: {line[:80]!r}")
            name, _, sig_b64 = line[len(SIGNATURE_PREFIX) :].rpartition(" ")
            if not name or " " in name:
                raise VerificationError(f"malformed signature line: {line[:80]!r}")
            raw = _b64(sig_b64, "a note signature")
            if len(raw) < 5:
                raise VerificationError("a note signature is too short")
            signatures.append(NoteSignature(name=name, key_id=raw[:4], signature=raw[4:]))
        if not signatures:
            raise VerificationError("the note has no signatures")
        return cls(text=text, signatures=tuple(signatures))

    def verify(self, key: VerifierKey) -> None:
        """Raises unless a signature line of ``key`` (same name and key id) verifies."""
        mine = [s for s in self.signatures if s.name == key.name and s.key_id == key.key_id]
        if not mine:
            raise VerificationError(f"the note has no signature by {key.name}+{key.key_id.hex()}")
        message = self.text.encode("utf-8")
        for sig in mine:
            if not key.verifies(message, sig.signature):
                raise VerificationError(f"the signature by {key.name} does not verify")


@dataclass(frozen=True)
class Checkpoint:
    """A C2SP tlog-checkpoint: origin, tree size, root hash (and extension lines)."""

    origin: str
    tree_size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    @classmethod
    def parse_body(cls, text: str) -> "Checkpoint":
        """Parses the body of a checkpoint note."""
        lines = text.split("\n")
        if len(lines) < 4 or lines[-1] != "":
            raise VerificationError("a checkpoint body has an origin, a size and a root hash")
        origin, size, root_b64 = lines[0], lines[1], lines[2]
        if not origin:
            raise VerificationError("the checkpoint's origin is empty")
        if not _DECIMAL.match(size):
            raise VerificationError("the checkpoint's tree size is not a decimal number")
        root = _b64(root_b64, "the checkpoint's root hash")
        if len(root) != 32:
            raise VerificationError("the checkpoint's root hash is not 32 bytes")
        return cls(origin=origin, tree_size=int(size), root_hash=root, extensions=tuple(lines[3:-1]))

    @classmethod
    def open(cls, note: str, key: Union[VerifierKey, str]) -> "Checkpoint":
        """Verifies a signed checkpoint note with ``key`` and parses it."""
        if isinstance(key, str):
            key = VerifierKey.parse(key)
        signed = SignedNote.parse(note)
        signed.verify(key)
        return cls.parse_body(signed.text)


def leaf_hash(data: bytes) -> bytes:
    """RFC 9162 leaf hash: SHA-256(0x00 || data)."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 interior node hash: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def root_from_inclusion_proof(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """The tree head that ``proof`` proves leaf hash ``leaf`` at ``index`` of
    a tree of ``size`` leaves under (RFC 9162 §2.1.3.2); raises on a proof
    of the wrong length or an index outside the tree."""
    if not 0 <= index < size:
        raise VerificationError(f"leaf index {index} is outside a tree of {size}")
    if len(leaf) != 32 or any(len(p) != 32 for p in proof):
        raise VerificationError("proof hashes are 32 bytes")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise VerificationError("the inclusion proof is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise VerificationError("the inclusion proof is too short")
    return r


@dataclass(frozen=True)
class VerifiedReceipt:
    """What :func:`verify_receipt` proved: the receipt's entry is leaf ``seq``
    of the log ``origin`` whose signed tree of ``tree_size`` has ``root_hash``."""

    seq: int
    evidence_hash: str
    origin: str
    tree_size: int
    root_hash: str


def as_receipt(receipt: Union[KernelReceipt, dict[str, Any]]) -> KernelReceipt:
    """``receipt`` as a :class:`KernelReceipt` (a dict is validated)."""
    if isinstance(receipt, KernelReceipt):
        return receipt
    try:
        return KernelReceipt.model_validate(receipt)
    except ValueError as e:
        raise VerificationError(f"not a receipt: {e}") from e


def verify_receipt(
    receipt: Union[KernelReceipt, dict[str, Any]],
    proof: Union[InclusionProof, dict[str, Any]],
    verifier_key: Union[VerifierKey, str],
    *,
    origin: Optional[str] = None,
) -> VerifiedReceipt:
    """Checks offline that ``receipt`` is recorded in the signed log.

    ``proof`` is the answer of ``GET /v1/proofs/inclusion?seq=<ledger_seq>``
    (or ``client.inclusion_proof(receipt.ledger_seq)``), ``verifier_key`` the
    log's key ``<name>+<id>+<key>`` (from the operator, not from the service
    being checked). With ``origin``, the checkpoint must name that log.
    Raises :class:`VerificationError` on any failure; answers what was proved.
    """
    try:
        if not isinstance(receipt, KernelReceipt):
            receipt = KernelReceipt.model_validate(receipt)
        if not isinstance(proof, InclusionProof):
            proof = InclusionProof.model_validate(proof)
    except ValueError as e:
        raise VerificationError(f"not a receipt and an inclusion proof: {e}") from e
    checkpoint = Checkpoint.open(proof.checkpoint, verifier_key)
    if origin is not None and checkpoint.origin != origin:
        raise VerificationError(f"the checkpoint is of log {checkpoint.origin!r}, not {origin!r}")
    if proof.seq != receipt.ledger_seq:
        raise VerificationError(f"the proof is for entry {proof.seq}, the receipt is entry {receipt.ledger_seq}")
    if proof.tree_size != checkpoint.tree_size:
        raise VerificationError(
            f"the proof is for a tree of {proof.tree_size}, the checkpoint signs {checkpoint.tree_size}"
        )
    leaf = leaf_hash(_hex32(receipt.evidence_hash, "the receipt's evidence_hash"))
    if leaf != _hex32(proof.leaf_hash, "the proof's leaf_hash"):
        raise VerificationError("the proof's leaf is not the receipt's entry")
    path = [_hex32(p, f"proof hash {i}") for i, p in enumerate(proof.proof)]
    root = root_from_inclusion_proof(proof.seq, proof.tree_size, leaf, path)
    if root != checkpoint.root_hash:
        raise VerificationError("the inclusion proof does not lead to the signed root hash")
    return VerifiedReceipt(
        seq=proof.seq,
        evidence_hash=receipt.evidence_hash,
        origin=checkpoint.origin,
        tree_size=checkpoint.tree_size,
        root_hash=checkpoint.root_hash.hex(),
    )
