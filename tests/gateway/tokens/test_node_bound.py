"""Viewer tokens name the node they were issued for: one cluster-wide key ring, yet a node refuses another node's."""

from __future__ import annotations

import base64
import json

import pytest

from hearth.gateway.tokens.base import ForeignToken, Scope, TokenError
from hearth.gateway.tokens.signed import SignedTokens, parse_ring

RING = parse_ring("k1:" + "s" * 32)  # what HEARTH_TOKEN_SECRET gives every node of a cluster


def test_a_token_for_node_n2_is_refused_by_n1s_verifier() -> None:
    n1, n2 = SignedTokens(RING, node="n1"), SignedTokens(RING, node="n2")
    token = n2.issue("s1", Scope.CONTROL, 60)
    assert n2.verify(token, "s1").node == "n2"
    with pytest.raises(ForeignToken) as refused:
        n1.verify(token, "s1")
    assert (refused.value.issued_for, refused.value.here) == ("n2", "n1")
    assert "node n2" in str(refused.value) and "(n1)" in str(refused.value)
    assert isinstance(refused.value, TokenError)  # every caller that refuses bad tokens refuses it too
    assert token not in str(refused.value)


def test_the_node_claim_is_signed() -> None:
    n2 = SignedTokens(RING, node="n2")
    v, payload, sig = n2.issue("s1", Scope.VIEW, 60).split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    body["nd"] = "n1"
    forged = base64.urlsafe_b64encode(json.dumps(body).encode()).rstrip(b"=").decode()
    with pytest.raises(TokenError, match="signature invalid"):
        SignedTokens(RING, node="n1").verify(f"{v}.{forged}.{sig}", "s1")


def test_a_token_that_names_no_node_still_binds_its_session() -> None:
    """Issued before tokens named their node (or by an unbound issuer): accepted for its own session only — the
    gateway then checks which node the session lives on."""
    old = SignedTokens(RING).issue("s1", Scope.VIEW, 60)
    n1 = SignedTokens(RING, node="n1")
    assert n1.verify(old, "s1").node is None
    with pytest.raises(TokenError, match="another session"):
        n1.verify(old, "s2")
