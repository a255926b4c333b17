"""``issue_permit``: the library's bytes, the CLI's bytes, and the real
server's verdict on the permits it makes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from kernels_client import Decision, KernelRequest, KernelsClient, ToolCall, issue_permit

from .support import AGENT, REPO, KernelsServer, clean_env, kernels_bin

FIXTURES = REPO / "tests" / "fixtures" / "python"

# The library-built permits of the fixtures (tampered or mis-keyed ones left out).
BUILT_BY_THE_LIBRARY = [
    ("permits", name)
    for name in (
        "P_action_add_runs_echo",
        "P_all_wrong",
        "P_empty_req_params",
        "P_expired",
        "P_forbidden",
        "P_ghost",
        "P_intent_only",
        "P_malformed_forbidden",
        "P_multi2",
        "P_not_yet",
        "P_ok",
        "P_old_key",
        "P_params_mismatch",
        "P_then_jur_deny",
        "P_unicode",
        "P_wrong_jurisdiction",
        "P_wrong_subject",
    )
] + [("permits_explicit_tools", "P_ok"), ("permits_restart", "P_restart")]

KEY_HEX = "746573742d7365637265742d6b65792d33322d62797465732d6c6f6e67313233"


def inputs_of(permit: dict) -> dict:
    return {
        "key_id": permit["key_id"],
        "issuer": permit["issuer"],
        "subject": permit["subject"],
        "action": permit["action"],
        "params": permit["params"],
        "constraints": permit["constraints"],
        "jurisdiction": permit["jurisdiction"],
        "max_executions": permit["max_executions"],
        "valid_from_ms": permit["valid_from_ms"],
        "valid_until_ms": permit["valid_until_ms"],
        "evidence_hash": permit["evidence_hash"],
        "proposal_hash": permit["proposal_hash"],
        "nonce": permit["nonce"],
    }


@pytest.mark.parametrize("fixture,name", BUILT_BY_THE_LIBRARY)
def test_library_permits_are_reproduced_byte_for_byte(fixture: str, name: str) -> None:
    scenario = json.loads((FIXTURES / fixture / "scenario.json").read_text())
    want = scenario["permits"][name]
    key = bytes.fromhex(scenario["keyring"][want["key_id"]]["hex"])
    got = issue_permit(key=key, **inputs_of(want))
    # Same fields in the same order, same values: the same JSON bytes.
    assert json.dumps(got, ensure_ascii=False) == json.dumps(want, ensure_ascii=False)
    canonical = scenario["permit_canonical"][name]
    from kernels_client.permits import canonical_permit_bytes

    assert canonical_permit_bytes(got, with_permit_id=False).decode() == canonical["for_permit_id"]
    assert canonical_permit_bytes(got, with_permit_id=True).decode() == canonical["for_signature"]


def test_the_cli_and_the_client_issue_the_same_permit(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "kernels.yaml").write_text("permits:\n  keys_env:\n    k1: PY_TEST_PERMIT_KEY\n")
    params = {"path": "notes/é.txt", "n": 0.1, "big": 2**70, "nested": {"b": [1, {"z": 1, "a": 2}]}}
    (tmp_path / "params.json").write_text(json.dumps(params, ensure_ascii=False))
    out = subprocess.run(
        [
            kernels_bin(),
            "permit",
            "issue",
            "--key-id",
            "k1",
            "--issuer",
            "opérateur",
            "--subject",
            "alice",
            "--action",
            "write_file",
            "--params",
            "params.json",
            "--valid-from-ms",
            "1000",
            "--valid-for",
            "10m",
            "--max-executions",
            "3",
            "--nonce",
            "n" * 32,
        ],
        cwd=tmp_path,
        env=clean_env({"PY_TEST_PERMIT_KEY": KEY_HEX}),
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    from_cli = json.loads(out.stdout)
    from_client = issue_permit(
        key=bytes.fromhex(KEY_HEX),
        key_id="k1",
        issuer="opérateur",
        subject="alice",
        action="write_file",
        params=params,
        valid_from_ms=1000,
        valid_for_ms=600_000,
        max_executions=3,
        nonce="n" * 32,
    )
    assert from_cli == from_client
    assert list(from_cli) == list(from_client)
    assert from_client["valid_until_ms"] == 601_000
    assert len(from_client["proposal_hash"]) == 64  # the shared default


def test_bad_inputs_are_refused() -> None:
    base = dict(key=b"k", key_id="k1", issuer="i", subject="s", action="a", valid_for_ms=1000)
    for bad in (
        {"issuer": ""},
        {"max_executions": 0},
        {"nonce": "short"},
        {"key": b""},
        {"valid_until_ms": 5},
        {"valid_for_ms": None},
        {"valid_for_ms": 0},
    ):
        with pytest.raises(ValueError):
            issue_permit(**{**base, **bad})
    a, b = issue_permit(**base), issue_permit(**base)
    assert a["nonce"] != b["nonce"] and len(a["nonce"]) == 32


def test_the_server_accepts_a_client_permit_for_its_tool_only(tmp_path: Path) -> None:
    (tmp_path / "k1.hex").write_text(KEY_HEX)
    server = KernelsServer(
        tmp_path,
        policy="allowed_actors: [alice]\nallowed_tools: [echo, add]\n",
        config="permits:\n  keys_file:\n    k1: k1.hex\n",
    ).start()
    try:
        permit = issue_permit(
            key=bytes.fromhex(KEY_HEX),
            key_id="k1",
            issuer="ops@example.com",
            subject="alice",
            action="echo",
            params={"text": "hello"},
            valid_for_ms=600_000,
            max_executions=5,
        )
        with KernelsClient(server.url, AGENT) as client:

            def submit(tool: str, params: dict, token: dict) -> object:
                return client.submit(
                    KernelRequest(
                        actor="alice",
                        intent="use a permit",
                        tool_call=ToolCall(name=tool, params=params),
                        params=params,
                        permit=token,
                    )
                )

            ok = submit("echo", {"text": "hello"}, permit)
            assert ok.decision is Decision.ALLOW and ok.tool_result == "hello"
            other = submit("add", {"a": 1, "b": 2}, permit)
            assert other.decision is Decision.DENY and "ACTION_MISMATCH" in (other.error or "")
            forged = issue_permit(
                key=b"not the key",
                key_id="k1",
                issuer="ops@example.com",
                subject="alice",
                action="echo",
                params={"text": "hello"},
                valid_for_ms=600_000,
            )
            bad = submit("echo", {"text": "hello"}, forged)
            assert bad.decision is Decision.DENY and "SIGNATURE_INVALID" in (bad.error or "")
            none = client.submit(
                KernelRequest(
                    actor="alice",
                    intent="no permit",
                    tool_call=ToolCall(name="echo", params={"text": "hello"}),
                )
            )
            assert none.decision is Decision.DENY and "MISSING_PERMIT" in (none.error or "")
    finally:
        assert server.stop() == 0
