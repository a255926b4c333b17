"""``verify_receipt`` and its parts: offline, against the kernels CLI, and
against a real ``kernels serve`` through the proof endpoints.

No vector here is copied from elsewhere: every expected value is computed in
the test from the definitions (RFC 9162 §2.1: leaf ``SHA-256(0x00 || d)``,
node ``SHA-256(0x01 || l || r)``, ``MTH``/``PATH`` written recursively here
with hashlib), or cross-checked against the Rust implementation: keys made by
``kernels keygen`` and notes, checkpoints and proofs signed here with them
must be accepted by ``kernels checkpoint verify`` / ``kernels proof verify``,
and the server's checkpoints and proofs must verify here. Every proof of every
leaf of trees up to 40 leaves, built by the recursive definition, must verify
with the library's iterative check (§2.1.3.2), and tampered variants must not.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from kernels_client import (
    Checkpoint,
    InclusionProof,
    KernelRequest,
    KernelsClient,
    KernelsError,
    SignedNote,
    ToolCall,
    VerificationError,
    VerifierKey,
    verify_receipt,
)
from kernels_client.proofs import key_id, leaf_hash, node_hash, root_from_inclusion_proof

from .support import KernelsServer, clean_env, kernels_bin


def b64(text: str) -> bytes:
    return base64.b64decode(text)


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def h_leaf(data: bytes) -> bytes:
    """RFC 9162 §2.1.1 leaf hash, written here."""
    return sha256(b"\x00" + data)


def h_node(left: bytes, right: bytes) -> bytes:
    """RFC 9162 §2.1.1 interior node hash, written here."""
    return sha256(b"\x01" + left + right)


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
    return h_node(mth(leaves[:k]), mth(leaves[k:]))


def path(m: int, leaves: list[bytes]) -> list[bytes]:
    """PATH(m, D[n]) over leaf hashes."""
    if len(leaves) == 1:
        return []
    k = split(len(leaves))
    if m < k:
        return path(m, leaves[:k]) + [mth(leaves[k:])]
    return path(m - k, leaves[k:]) + [mth(leaves[:k])]


def test_hashes_and_small_trees_from_the_definitions() -> None:
    # The library's hashes are the definitions'.
    for data in (b"", b"\x00", bytes(range(32)), b"kernels" * 50):
        assert leaf_hash(data) == h_leaf(data)
        assert node_hash(h_leaf(data), h_leaf(data[::-1])) == h_node(h_leaf(data), h_leaf(data[::-1]))
    assert leaf_hash(b"") != sha256(b"")  # the 0x00 prefix matters (second preimages)
    # Trees of 1, 2, 3 and 5 leaves, written out by hand from §2.1.1.
    d = [bytes([i]) * (i + 1) for i in range(5)]
    l = [h_leaf(x) for x in d]
    assert mth([]) == sha256(b"")
    assert mth(l[:1]) == l[0]
    assert mth(l[:2]) == h_node(l[0], l[1])
    root3 = h_node(h_node(l[0], l[1]), l[2])
    assert mth(l[:3]) == root3
    root5 = h_node(h_node(h_node(l[0], l[1]), h_node(l[2], l[3])), l[4])
    assert mth(l[:5]) == root5
    # PATH by hand (§2.1.3.1): leaf 2 of 3 is proved by H(l0, l1); leaf 0 of 5
    # by l1, H(l2, l3), l4; leaf 4 of 5 by the root of the first four.
    assert path(2, l[:3]) == [h_node(l[0], l[1])]
    assert path(0, l[:5]) == [l[1], h_node(l[2], l[3]), l[4]]
    assert path(4, l[:5]) == [h_node(h_node(l[0], l[1]), h_node(l[2], l[3]))]
    assert root_from_inclusion_proof(2, 3, l[2], path(2, l[:3])) == root3
    assert root_from_inclusion_proof(0, 5, l[0], path(0, l[:5])) == root5
    assert root_from_inclusion_proof(4, 5, l[4], path(4, l[:5])) == root5


def test_every_proof_of_every_small_tree_verifies() -> None:
    for n in range(1, 41):
        leaves = [leaf_hash(i.to_bytes(4, "big")) for i in range(n)]
        root = mth(leaves)
        for m in range(n):
            assert root_from_inclusion_proof(m, n, leaves[m], path(m, leaves)) == root, (m, n)


def mutations(index: int, size: int, leaf: bytes, proof: list[bytes]):
    """Tampered variants: another leaf, a moved index, other tree sizes, and
    paths with a flipped bit, a component missing, added or inserted."""
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


# --- a signed log made here, for verify_receipt -------------------------------


class Log:
    """A tiny log: entry hashes, a C2SP checkpoint signer, proofs by definition."""

    def __init__(self, n: int, origin: str = "kernels/test-001", seed: bytes | None = None) -> None:
        self.origin = origin
        self.entry_hashes = [hashlib.sha256(f"entry {i}".encode()).hexdigest() for i in range(n)]
        self.private = Ed25519PrivateKey.from_private_bytes(seed) if seed else Ed25519PrivateKey.generate()
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


# --- cross-checks with the Rust implementation (the real binary) --------------


def kernels(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [kernels_bin(), *args], cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=60
    )


def parse_private_key(text: str) -> tuple[str, bytes]:
    """``PRIVATE+KEY+<name>+<id>+<base64(0x01 || seed)>``: the name and seed
    (read here; the base64 may itself hold a '+')."""
    assert text.startswith("PRIVATE+KEY+"), text[:20]
    name, kid, encoded = text[len("PRIVATE+KEY+") :].split("+", 2)
    raw = base64.b64decode(encoded)
    assert raw[0] == 1 and len(raw) == 33
    seed = raw[1:]
    public = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    assert kid == key_id(name, public).hex()
    return name, seed


def verifier_key_of(name: str, seed: bytes) -> str:
    """The verifier key text of an Ed25519 seed, built here."""
    public = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    kid = sha256(name.encode() + b"\n" + b"\x01" + public)[:4]
    return f"{name}+{kid.hex()}+{base64.b64encode(bytes([1]) + public).decode()}"


def keygen_seed(tmp_path: Path, kernel_id: str) -> tuple[str, bytes]:
    """``kernels keygen``: the verifier key it prints and the seed it wrote."""
    out = kernels(tmp_path, "keygen", "--kernel-id", kernel_id, "--out", "signing.key")
    assert out.returncode == 0, out.stderr
    name, seed = parse_private_key((tmp_path / "signing.key").read_text().strip())
    assert name == f"kernels/{kernel_id}"
    return out.stdout.strip(), seed


def test_keys_notes_and_proofs_made_here_pass_the_kernels_cli(tmp_path: Path) -> None:
    vkey, seed = keygen_seed(tmp_path, "py-cross")
    # The key the CLI printed is the one derived here from its seed.
    public = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    parsed = VerifierKey.parse(vkey)
    assert parsed.name == "kernels/py-cross"
    assert parsed.public_key == public
    assert parsed.key_id == key_id("kernels/py-cross", public)
    assert vkey == verifier_key_of("kernels/py-cross", seed)

    log = Log(13, origin="kernels/py-cross", seed=seed)
    assert log.vkey == vkey
    (tmp_path / "cp.txt").write_text(log.checkpoint(13))
    out = kernels(tmp_path, "checkpoint", "verify", "--key", vkey, "cp.txt")
    assert out.returncode == 0, out.stdout + out.stderr
    # A checkpoint of another origin, or another key: refused by the CLI too.
    (tmp_path / "cp-origin.txt").write_text(log.checkpoint(13, origin="kernels/other"))
    assert kernels(tmp_path, "checkpoint", "verify", "--key", vkey, "cp-origin.txt").returncode == 1
    assert kernels(tmp_path, "checkpoint", "verify", "--key", Log(13, origin="kernels/py-cross").vkey, "cp.txt").returncode == 1
    for seq, size in ((0, 13), (6, 13), (12, 13), (4, 5)):
        proof = log.proof(seq, size)
        (tmp_path / "proof.json").write_text(json.dumps(proof))
        out = kernels(
            tmp_path, "proof", "verify", "--key", vkey, "proof.json", "--entry-hash", log.entry_hashes[seq]
        )
        assert out.returncode == 0, (seq, size, out.stdout + out.stderr)
        # Python agrees, and both refuse a flipped proof hash.
        verify_receipt(log.receipt(seq), proof, vkey)
        if proof["proof"]:
            bad = {**proof, "proof": [("1" if proof["proof"][0][0] == "0" else "0") + proof["proof"][0][1:]] + proof["proof"][1:]}
            (tmp_path / "bad.json").write_text(json.dumps(bad))
            out = kernels(
                tmp_path, "proof", "verify", "--key", vkey, "bad.json", "--entry-hash", log.entry_hashes[seq]
            )
            assert out.returncode == 1, out.stdout
            with pytest.raises(VerificationError):
                verify_receipt(log.receipt(seq), bad, vkey)


# --- against a real kernels serve ---------------------------------------------


def lookup_request(key: str = "k") -> KernelRequest:
    return KernelRequest(
        actor="agent-001", intent="look up", tool_call=ToolCall(name="lookup", params={"key": key}), params={"key": key}
    )


def pinned_key(server: KernelsServer) -> str:
    """The verifier key as the operator knows it: derived here from the key
    file the server created in its data dir, not asked of the server."""
    name, seed = parse_private_key((server.workdir / "data" / "signing.key").read_text().strip())
    return verifier_key_of(name, seed)


def test_verify_a_real_receipt(server: KernelsServer, agent: KernelsClient, auditor: KernelsClient) -> None:
    receipts = [agent.submit(lookup_request(str(i))) for i in range(7)]
    key = pinned_key(server)
    assert auditor.verifier_key() == key
    note = auditor.checkpoint()
    cp = Checkpoint.open(note, key)
    assert cp.origin == "kernels/py-001"
    assert cp.tree_size >= 8
    for r in receipts:
        proof = agent.inclusion_proof(r.ledger_seq)
        got = verify_receipt(r, proof, key)
        assert got.seq == r.ledger_seq and got.tree_size >= r.ledger_seq + 1
    first = receipts[0]
    old = agent.inclusion_proof(first.ledger_seq, tree_size=first.ledger_seq + 1)
    assert verify_receipt(first, old, key).tree_size == first.ledger_seq + 1
    with pytest.raises(VerificationError):
        verify_receipt(receipts[1], agent.inclusion_proof(first.ledger_seq), key)
    with pytest.raises(KernelsError) as e:
        agent.inclusion_proof(10_000)
    assert e.value.status == 400


def test_the_client_verifies_a_receipt_through_the_endpoints(server: KernelsServer, agent: KernelsClient) -> None:
    key = pinned_key(server)
    receipts = [agent.submit(lookup_request(f"e{i}")) for i in range(5)]
    for r in receipts:
        got = agent.verify_receipt(r, key, origin="kernels/py-001")
        assert got.evidence_hash == r.evidence_hash and got.tree_size > r.ledger_seq
        # The same proof, checked from first principles here.
        proof = agent.inclusion_proof(r.ledger_seq, tree_size=got.tree_size)
        root = h_leaf(bytes.fromhex(r.evidence_hash))
        index, size = r.ledger_seq, got.tree_size
        assert proof.leaf_hash == root.hex()
        # Fold the path by RFC 9162 §2.1.3.2, written here.
        fn, sn = index, size - 1
        for p in (bytes.fromhex(x) for x in proof.proof):
            if fn & 1 or fn == sn:
                root = h_node(p, root)
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
            else:
                root = h_node(root, p)
            fn >>= 1
            sn >>= 1
        assert sn == 0
        assert root.hex() == got.root_hash
    # A dict receipt works too; against an old tree size as well.
    first = receipts[0].model_dump()
    assert agent.verify_receipt(first, key, tree_size=receipts[0].ledger_seq + 1).tree_size == receipts[0].ledger_seq + 1
    # Another log's key, another origin, a forged receipt: refused.
    with pytest.raises(VerificationError):
        agent.verify_receipt(receipts[0], Log(3, origin="kernels/py-001").vkey)
    with pytest.raises(VerificationError):
        agent.verify_receipt(receipts[0], key, origin="kernels/other")
    forged = {**first, "evidence_hash": hashlib.sha256(b"forged").hexdigest()}
    with pytest.raises(VerificationError):
        agent.verify_receipt(forged, key)


def test_the_async_client_verifies_a_receipt_through_the_endpoints(server: KernelsServer) -> None:
    import asyncio

    from kernels_client import AsyncKernelsClient

    from .support import AGENT, FAST_RETRY

    key = pinned_key(server)

    async def main() -> None:
        async with AsyncKernelsClient(server.url, AGENT, retry=FAST_RETRY) as agent:
            r = await agent.submit(lookup_request("async"))
            got = await agent.verify_receipt(r, key)
            assert got.seq == r.ledger_seq and got.evidence_hash == r.evidence_hash
            with pytest.raises(VerificationError):
                await agent.verify_receipt({**r.model_dump(), "ledger_seq": r.ledger_seq - 1}, key)

    asyncio.run(main())
