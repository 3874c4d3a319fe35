"""The Standard Webhooks signer: the spec library's own test vector, verification (tampering, replay, several
signatures), and the secret's format — a bad one is a config problem naming the fix, never echoing the value."""

from __future__ import annotations

import base64
import secrets

import pytest

from hearth.config import Settings, load_settings, origins
from hearth.errors import ConfigError
from hearth.webhooks.signer import SecretFormatError, Signer, VerificationError, parse_secret, sign, verify

# From the Standard Webhooks reference library's tests (libraries/python/tests/test_webhooks.py, test_sign_function)
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TS = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_the_standard_webhooks_test_vector() -> None:
    assert Signer(VECTOR_SECRET).sign(VECTOR_ID, VECTOR_TS, VECTOR_BODY) == VECTOR_SIGNATURE
    assert sign(parse_secret(VECTOR_SECRET), VECTOR_ID, VECTOR_TS, VECTOR_BODY) == VECTOR_SIGNATURE
    headers = {"webhook-id": VECTOR_ID, "webhook-timestamp": str(VECTOR_TS), "webhook-signature": VECTOR_SIGNATURE}
    verify(VECTOR_SECRET, headers, VECTOR_BODY, now=VECTOR_TS + 10)


def test_headers_of_an_attempt_verify_and_tampering_does_not() -> None:
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    body = b'{"type":"session.ready","timestamp":"2026-12-06T21:00:00.000000Z","data":{}}'
    headers = Signer(secret).headers("msg_1", body, now=1_800_000_000)
    assert headers["webhook-timestamp"] == "1800000000"
    assert headers["webhook-signature"].startswith("v1,")
    verify(secret, headers, body, now=1_800_000_000)
    with pytest.raises(VerificationError):
        verify(secret, headers, body.replace(b"ready", b"faile"), now=1_800_000_000)  # body changed
    with pytest.raises(VerificationError):
        verify(secret, {**headers, "webhook-id": "msg_2"}, body, now=1_800_000_000)  # id changed
    with pytest.raises(VerificationError):
        verify(secret, headers, body, now=1_800_000_000 + 301)  # replayed after the tolerance
    other = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    with pytest.raises(VerificationError):
        verify(other, headers, body, now=1_800_000_000)  # another secret
    # Rotation: several space-separated signatures, one of them valid.
    several = {**headers, "webhook-signature": f"v1,AAAA v1a,BBBB {headers['webhook-signature']}"}
    verify(secret, several, body, now=1_800_000_000)


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "must start with 'whsec_'"),
        ("whsec_not base64!!", "not valid base64"),
        ("whsec_" + base64.b64encode(b"short").decode(), "decodes to 5 bytes"),
        (
            "whsec_" + base64.b64encode(bytes(range(65))).decode(),
            "decodes to 65 bytes",
        ),  # fixed: xdist workers collect alike
    ],
)
def test_a_bad_secret_names_the_fix_and_never_the_value(value: str, says: str) -> None:
    with pytest.raises(SecretFormatError) as caught:
        parse_secret(value)
    assert says in str(caught.value) and "generate one" in str(caught.value)
    assert value.removeprefix("whsec_") not in str(caught.value)
    with pytest.raises(ConfigError) as config:
        load_settings({"HEARTH_WEBHOOK_URL": "http://127.0.0.1:9/hook", "HEARTH_WEBHOOK_SECRET": value}, env_file=None)
    assert any(says in p for p in config.value.problems), config.value.problems
    assert value.removeprefix("whsec_") not in config.value.reason


def test_url_and_secret_config_checks() -> None:
    with pytest.raises(ConfigError) as no_secret:
        load_settings({"HEARTH_WEBHOOK_URL": "https://app.example/hooks"}, env_file=None)
    assert any("without HEARTH_WEBHOOK_SECRET" in p for p in no_secret.value.problems)
    with pytest.raises(ConfigError) as bad_url:
        load_settings({"HEARTH_WEBHOOK_URL": "ftp://x", "HEARTH_WEBHOOK_SECRET": VECTOR_SECRET}, env_file=None)
    assert any("must be an http(s) URL" in p for p in bad_url.value.problems)


def test_the_secret_is_hidden_in_config_check_and_reprs() -> None:
    env = {"HEARTH_WEBHOOK_URL": "https://app.example/hooks", "HEARTH_WEBHOOK_SECRET": VECTOR_SECRET}
    s: Settings = load_settings(env, env_file=None)
    shown = {o.variable: o.value for o in origins(s, env, env_file=None)}
    assert shown["HEARTH_WEBHOOK_SECRET"] == "<set, hidden>"
    assert shown["HEARTH_WEBHOOK_URL"] == "https://app.example/hooks"
    assert "MfKQ9r8" not in repr(s) and "MfKQ9r8" not in repr(Signer(VECTOR_SECRET))
