from __future__ import annotations

from pathlib import Path

import pytest

from hearth.gateway.tokens.base import Scope, TokenError
from hearth.gateway.tokens.signed import SignedTokens, load_or_create_key, parse_ring


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_roundtrip_and_scope() -> None:
    t = SignedTokens(b"k" * 32)
    claims = t.verify(t.issue("s1", Scope.VIEW, 60), "s1")
    assert claims.session_id == "s1" and claims.scope is Scope.VIEW


def test_bound_to_one_session() -> None:
    t = SignedTokens(b"k" * 32)
    with pytest.raises(TokenError, match="another session"):
        t.verify(t.issue("s1", Scope.CONTROL, 60), "s2")


def test_expiry() -> None:
    clock = Clock()
    t = SignedTokens(b"k" * 32, clock)
    tok = t.issue("s1", Scope.CONTROL, 30)
    clock.now += 31
    with pytest.raises(TokenError, match="expired"):
        t.verify(tok, "s1")


@pytest.mark.parametrize("bad", ["", "garbage", "v1.a.b", "v2.x.y"])
def test_malformed_or_forged(bad: str) -> None:
    with pytest.raises(TokenError):
        SignedTokens(b"k" * 32).verify(bad, "s1")


def test_other_key_and_tampered_payload_rejected() -> None:
    tok = SignedTokens(b"a" * 32).issue("s1", Scope.VIEW, 60)
    with pytest.raises(TokenError, match="signature"):
        SignedTokens(b"b" * 32).verify(tok, "s1")
    v, payload, sig = tok.split(".")
    with pytest.raises(TokenError):
        SignedTokens(b"a" * 32).verify(f"{v}.{payload[:-2]}AA.{sig}", "s1")


def test_key_file_created_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "d" / "token.key"
    key = load_or_create_key(path)
    assert len(key) == 32 and path.stat().st_mode & 0o777 == 0o600
    assert load_or_create_key(path) == key


def test_key_ring_rotation_keeps_old_tokens_valid_until_the_old_key_is_dropped() -> None:
    old = SignedTokens(parse_ring("k1:" + "a" * 32))
    token = old.issue("s1", Scope.CONTROL, 60)
    both = SignedTokens(parse_ring("k2:" + "b" * 32 + ",k1:" + "a" * 32))  # new key first: it signs
    assert both.verify(token, "s1").scope is Scope.CONTROL  # a live viewer's old token still opens
    fresh = both.issue("s1", Scope.VIEW, 60)
    # a replica not yet rolled (old ring only) refuses the new key's tokens, naming why:
    with pytest.raises(TokenError, match="retired key"):
        old.verify(fresh, "s1")
    new_only = SignedTokens(parse_ring("k2:" + "b" * 32))
    assert new_only.verify(fresh, "s1").scope is Scope.VIEW
    with pytest.raises(TokenError, match="retired key"):
        new_only.verify(token, "s1")
    forged = SignedTokens(parse_ring("k2:" + "c" * 32)).issue("s1", Scope.CONTROL, 60)
    with pytest.raises(TokenError, match="signature invalid"):
        both.verify(forged, "s1")


def test_a_bare_secret_is_one_key_and_a_bad_ring_names_the_format() -> None:
    assert parse_ring("x" * 32) == {"": b"x" * 32}
    for bad in ("k1:", ":abc", "k1:" + "a" * 20 + ",k1:" + "b" * 20):
        with pytest.raises(ValueError, match="kid:secret"):
            parse_ring(bad)
