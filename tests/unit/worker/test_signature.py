"""``jira_signature_ok``: ``X-Hub-Signature: sha256=<hex HMAC-SHA256(secret, raw body)>``."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from worker.webhooks.app import jira_signature_ok

SECRET = b"current-secret"
OLD = b"previous-secret"
BODY = b'{"webhookEvent":"jira:issue_updated","issue":{"id":"10042","key":"OPS-12"}}'


def _sig(secret: bytes, body: bytes) -> str:
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def test_github_published_test_vector() -> None:
    # https://docs.github.com/webhooks/using-webhooks/validating-webhook-deliveries
    secret = b"It's a Secret to Everybody"
    body = b"Hello, World!"
    want = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    assert jira_signature_ok(body, f"sha256={want}", (secret,))
    assert not jira_signature_ok(body + b"\n", f"sha256={want}", (secret,))
    assert not jira_signature_ok(b"Hello, World! ", f"sha256={want}", (secret,))


def test_hmac_is_over_the_raw_bytes_not_reencoded_json() -> None:
    raw = b'{"a": 1,  "b":"\\u00e9"}'
    same_json = b'{"a":1,"b":"\xc3\xa9"}'
    header = f"sha256={_sig(SECRET, raw)}"
    assert jira_signature_ok(raw, header, (SECRET,))
    assert not jira_signature_ok(same_json, header, (SECRET,))


def test_accepts_valid_signature() -> None:
    assert jira_signature_ok(BODY, f"sha256={_sig(SECRET, BODY)}", (SECRET,))


def test_accepts_upper_case_hex_and_prefix() -> None:
    digest = _sig(SECRET, BODY).upper()
    assert jira_signature_ok(BODY, f"sha256={digest}", (SECRET,))
    assert jira_signature_ok(BODY, f"SHA256={digest}", (SECRET,))


@pytest.mark.parametrize("header", [None, "", "sha256", "sha256=", "=" + "0" * 64])
def test_rejects_missing_or_empty_header(header: str | None) -> None:
    assert not jira_signature_ok(BODY, header, (SECRET,))


@pytest.mark.parametrize("algo", ["sha1", "sha512", "md5", "v1", "sha256x"])
def test_rejects_other_algorithm_prefix(algo: str) -> None:
    # even when the hex is the correct HMAC-SHA256
    assert not jira_signature_ok(BODY, f"{algo}={_sig(SECRET, BODY)}", (SECRET,))


def test_rejects_real_sha1_signature() -> None:
    digest = hmac.new(SECRET, BODY, hashlib.sha1).hexdigest()
    assert not jira_signature_ok(BODY, f"sha1={digest}", (SECRET,))


def test_rejects_wrong_secret() -> None:
    assert not jira_signature_ok(BODY, f"sha256={_sig(b'guess', BODY)}", (SECRET,))


def test_rejects_plain_sha256_of_body() -> None:
    assert not jira_signature_ok(BODY, f"sha256={hashlib.sha256(BODY).hexdigest()}", (SECRET,))


@pytest.mark.parametrize("keep", [0, 1, 32, 63])
def test_rejects_truncated_digest(keep: int) -> None:
    digest = _sig(SECRET, BODY)[:keep]
    assert not jira_signature_ok(BODY, f"sha256={digest}", (SECRET,))


def test_rejects_digest_with_extra_characters() -> None:
    assert not jira_signature_ok(BODY, f"sha256={_sig(SECRET, BODY)}00", (SECRET,))


def test_rejects_when_no_secret_is_configured() -> None:
    assert not jira_signature_ok(BODY, f"sha256={_sig(SECRET, BODY)}", ())
    assert not jira_signature_ok(BODY, f"sha256={_sig(b'', BODY)}", ())


def test_either_secret_verifies_during_rotation() -> None:
    secrets = (SECRET, OLD)
    assert jira_signature_ok(BODY, f"sha256={_sig(SECRET, BODY)}", secrets)
    assert jira_signature_ok(BODY, f"sha256={_sig(OLD, BODY)}", secrets)
    assert not jira_signature_ok(BODY, f"sha256={_sig(b'other', BODY)}", secrets)
    # after the rotation ends the old secret no longer verifies
    assert not jira_signature_ok(BODY, f"sha256={_sig(OLD, BODY)}", (SECRET,))


def test_non_ascii_header_is_rejected_not_an_error() -> None:
    # Starlette decodes header bytes as latin-1, so b"sha256=\xe9..." arrives as "é..."
    assert not jira_signature_ok(BODY, "sha256=" + "é" * 64, (SECRET,))
