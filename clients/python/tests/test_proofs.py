"""``verify_receipt`` and its parts, offline.

Independent data: the RFC 6962 reference tree (the eight test inputs of
RFC 6962 implementations and the published root and inclusion proof of its
first leaf, as in transparency-dev/merkle's testdata/inclusion/1/happy-path.json)
and the signed-note example of golang.org/x/mod/sumdb/note (PeterNeumann).
Beyond them, every proof of every leaf of trees up to 40 leaves, built by the
recursive definition of RFC 9162 §2.1.1/§2.1.3.1 written here, must verify
with the library's iterative check (§2.1.3.2), and the tampered variants that
transparency-dev's vectors list must not.
"""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from kernels_client import (
    Checkpoint,
    InclusionProof,
    SignedNote,
    VerificationError,
    VerifierKey,
    verify_receipt,
)
from kernels_client.proofs import key_id, leaf_hash, node_hash, root_from_inclusion_proof

# --- independent data ---------------------------------------------------------

RFC6962_INPUTS = [
    bytes.fromhex(h)
    for h in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f")
]
RFC6962_ROOT_8 = "XcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg="
RFC6962_LEAF_0 = "bjQLnP+zepicpUTmu3gKLHiQHT+zNzh2hRGjBhevoB0="
RFC6962_PROOF_0_OF_8 = [
    "lqKW0iTyhcZ77pPDD4owkVfw2qNdxbh+QQt4YwoJz8c=",
    "Xwg/ChozygdqlSeYMlgNs+DvRYS9/x9UyKNg9Q3jAx4=",
    "a0eq8p7jwq+a+Im8H7klTavTEXfxYjLdaqsDXKOb9uQ=",
]

GO_NOTE_KEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_NOTE_TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
GO_NOTE = (
    GO_NOTE_TEXT
    + "\n— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)


def b64(text: str) -> bytes:
    return base64.b64decode(text)


# --- the recursive definitions of RFC 9162 §2.1, as the oracle ----------------


def split(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def mth(leaves: list[bytes]) -> bytes:
    """MTH over leaf *hashes* (the leaf level already hashed)."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = split(len(leaves))
    return node_hash(mth(leaves[:k]), mth(leaves[k:]))


def path(m: int, leaves: list[bytes]) -> list[bytes]:
    """PATH(m, D[n]) over leaf hashes."""
    if len(leaves) == 1:
        return []
    k = split(len(leaves))
    if m < k:
        return path(m, leaves[:k]) + [mth(leaves[k:])]
    return path(m - k, leaves[k:]) + [mth(leaves[:k])]


def test_the_rfc6962_reference_tree() -> None:
    leaves = [leaf_hash(d) for d in RFC6962_INPUTS]
    assert leaves[0] == b64(RFC6962_LEAF_0)
    assert mth(leaves) == b64(RFC6962_ROOT_8)
    published = [b64(p) for p in RFC6962_PROOF_0_OF_8]
    assert path(0, leaves) == published
    assert root_from_inclusion_proof(0, 8, leaves[0], published) == b64(RFC6962_ROOT_8)


def test_every_proof_of_every_small_tree_verifies() -> None:
    for n in range(1, 41):
        leaves = [leaf_hash(i.to_bytes(4, "big")) for i in range(n)]
        root = mth(leaves)
        for m in range(n):
            assert root_from_inclusion_proof(m, n, leaves[m], path(m, leaves)) == root, (m, n)


def mutations(index: int, size: int, leaf: bytes, proof: list[bytes]):
    """The tampered variants of transparency-dev/merkle's inclusion vectors."""
    yield "wrong leaf", index, size, hashlib.sha256(b"WrongLeaf").digest(), proof
    yield "leafIdx+1", index + 1, size, leaf, proof
    if index > 0:
        yield "leafIdx-1", index - 1, size, leaf, proof
    yield "leafIdx^2", index ^ 2, size, leaf, proof
    yield "treeSize*2", index, size * 2, leaf, proof
    yield "treeSize/2", index, size // 2, leaf, proof
    for i in range(len(proof)):
        flipped = bytearray(proof[i])
        flipped[3] ^= 8
        yield f"proof[{i}] bit flipped", index, size, leaf, proof[:i] + [bytes(flipped)] + proof[i + 1 :]
    if proof:
        yield "truncated", index, size, leaf, proof[:-1]
        yield "removed component", index, size, leaf, proof[1:]
    yield "preceding garbage", index, size, leaf, [b"\x01" * 32] + proof
    yield "trailing garbage", index, size, leaf, proof + [b"\x02" * 32]
    yield "inserted component", index, size, leaf, proof[:1] + [b"\x03" * 32] + proof[1:]


@pytest.mark.parametrize("index,size", [(0, 8), (5, 8), (2, 3), (0, 2), (6, 7), (12, 13), (0, 1)])
def test_tampered_proofs_are_rejected(index: int, size: int) -> None:
    leaves = [leaf_hash(i.to_bytes(4, "big")) for i in range(size)]
    root = mth(leaves)
    proof = path(index, leaves)
    assert root_from_inclusion_proof(index, size, leaves[index], proof) == root
    seen = 0
    for what, i, n, leaf, p in mutations(index, size, leaves[index], proof):
        seen += 1
        try:
            got = root_from_inclusion_proof(i, n, leaf, p)
        except VerificationError:
            continue
        assert got != root, f"{what} verified"
    assert seen >= (6 if size == 1 else 9)


def test_the_sumdb_note_example() -> None:
    key = VerifierKey.parse(GO_NOTE_KEY)
    assert key.name == "PeterNeumann" and key.key_id.hex() == "c74f20a3"
    assert key_id(key.name, key.public_key).hex() == "c74f20a3"
    note = SignedNote.parse(GO_NOTE)
    assert note.text == GO_NOTE_TEXT
    note.verify(key)
    with pytest.raises(VerificationError):
        SignedNote.parse(GO_NOTE.replace("cryptography", "cryptographY")).verify(key)
    with pytest.raises(VerificationError):  # the key of another name
        SignedNote.parse(GO_NOTE.replace("— PeterNeumann", "— PeterNeumanN")).verify(key)
    for bad in (
        "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # wrong id
        "PeterNeumanN+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # id of another name
        "PeterNeumann+c74f20a3+AhpVc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # not Ed25519
        "PeterNeumann+c74f20a3",
        "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW+",
        "",
    ):
        with pytest.raises(VerificationError):
            VerifierKey.parse(bad)


# --- a signed log made here, for verify_receipt -------------------------------


class Log:
    """A tiny log: entry hashes, a C2SP checkpoint signer, proofs by definition."""

    def __init__(self, n: int, origin: str = "kernels/test-001") -> None:
        self.origin = origin
        self.entry_hashes = [hashlib.sha256(f"entry {i}".encode()).hexdigest() for i in range(n)]
        self.private = Ed25519PrivateKey.generate()
        public = self.private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.key_id = key_id(origin, public)
        encoded = base64.b64encode(bytes([1]) + public).decode()
        self.vkey = f"{origin}+{self.key_id.hex()}+{encoded}"

    def leaves(self) -> list[bytes]:
        return [leaf_hash(bytes.fromhex(h)) for h in self.entry_hashes]

    def checkpoint(self, size: int, *, origin: str | None = None) -> str:
        body = f"{origin or self.origin}\n{size}\n{base64.b64encode(mth(self.leaves()[:size])).decode()}\n"
        sig = self.private.sign(body.encode())
        return body + f"\n— {self.origin} {base64.b64encode(self.key_id + sig).decode()}\n"

    def receipt(self, seq: int) -> dict:
        return {
            "request_id": f"r{seq}",
            "status": "ACCEPTED",
            "decision": "ALLOW",
            "state_from": "IDLE",
            "state_to": "IDLE",
            "ts_ms": 1,
            "error": None,
            "evidence_hash": self.entry_hashes[seq],
            "ledger_seq": seq,
        }

    def proof(self, seq: int, size: int) -> dict:
        leaves = self.leaves()[:size]
        return {
            "seq": seq,
            "tree_size": size,
            "leaf_hash": leaves[seq].hex(),
            "proof": [p.hex() for p in path(seq, leaves)],
            "checkpoint": self.checkpoint(size),
        }


def test_a_receipt_verifies_against_the_signed_checkpoint() -> None:
    log = Log(11)
    while "+" not in log.vkey.split("+", 2)[2]:  # a key whose base64 has a '+' too
        log = Log(11)
    for seq in (0, 5, 10):
        for size in (seq + 1, 11):
            got = verify_receipt(log.receipt(seq), log.proof(seq, size), log.vkey, origin=log.origin)
            assert (got.seq, got.tree_size, got.origin) == (seq, size, log.origin)
            assert got.root_hash == mth(log.leaves()[:size]).hex()
    # Models are accepted as well as dicts.
    from kernels_client import KernelReceipt

    verify_receipt(KernelReceipt(**log.receipt(3)), InclusionProof(**log.proof(3, 9)), VerifierKey.parse(log.vkey))
    parsed = Checkpoint.open(log.checkpoint(4), log.vkey)
    assert parsed.tree_size == 4 and parsed.origin == log.origin


def test_every_tampering_is_refused() -> None:
    log = Log(9)
    receipt, proof = log.receipt(4), log.proof(4, 9)
    other = Log(9)

    def flip_hex(h: str) -> str:
        return ("0" if h[0] != "0" else "1") + h[1:]

    signature_line = proof["checkpoint"].rsplit("\n— ", 1)[1]
    sig = bytearray(base64.b64decode(signature_line.split(" ")[1]))
    sig[10] ^= 1
    altered_sig = proof["checkpoint"].rsplit(" ", 1)[0] + " " + base64.b64encode(bytes(sig)).decode() + "\n"
    cases = {
        "flipped proof hash": (receipt, {**proof, "proof": [flip_hex(proof["proof"][0])] + proof["proof"][1:]}),
        "wrong evidence hash": ({**receipt, "evidence_hash": flip_hex(receipt["evidence_hash"])}, proof),
        "another entry's receipt": (log.receipt(5), proof),
        "leaf hash of another entry": (receipt, {**proof, "leaf_hash": log.proof(5, 9)["leaf_hash"]}),
        "proof for another seq": ({**receipt, "ledger_seq": 5}, proof),
        "altered signature": (receipt, {**proof, "checkpoint": altered_sig}),
        "altered size": (receipt, {**proof, "checkpoint": proof["checkpoint"].replace("\n9\n", "\n8\n", 1)}),
        "altered root": (
            receipt,
            {
                **proof,
                "checkpoint": proof["checkpoint"].replace(
                    proof["checkpoint"].split("\n")[2], base64.b64encode(mth(log.leaves()[:8])).decode(), 1
                ),
            },
        ),
        "signed by another key": (receipt, {**proof, "checkpoint": other.checkpoint(9)}),
        "checkpoint of another size": (receipt, {**proof, "checkpoint": log.checkpoint(8)}),
        "no signature": (receipt, {**proof, "checkpoint": proof["checkpoint"].split("\n\n")[0] + "\n"}),
        "no final newline": (receipt, {**proof, "checkpoint": proof["checkpoint"].rstrip("\n")}),
        "short proof hash": (receipt, {**proof, "proof": [proof["proof"][0][:62]] + proof["proof"][1:]}),
        "evidence hash not hex": ({**receipt, "evidence_hash": "z" * 64}, proof),
    }
    for what, (r, p) in cases.items():
        with pytest.raises(VerificationError):
            verify_receipt(r, p, log.vkey)
            pytest.fail(f"{what} verified")
    with pytest.raises(VerificationError):
        verify_receipt(receipt, proof, other.vkey)
    with pytest.raises(VerificationError):
        verify_receipt(receipt, proof, log.vkey, origin="kernels/other")
    with pytest.raises(VerificationError):
        verify_receipt({"not": "a receipt"}, proof, log.vkey)
    # The untampered pair still verifies (the refusals are about the tampering).
    verify_receipt(receipt, proof, log.vkey)
