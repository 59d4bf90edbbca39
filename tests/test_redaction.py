"""PII redaction: every listed kind is removed, look-alikes that fail their checksum are not."""

from __future__ import annotations

import pytest

from lookout.redaction import Redactor, iban_ok, luhn_ok

CASES = {
    "email": "write to jane.doe+llm@example.co.uk about it",
    "phone": "call me on +44 20 7946 0958 tomorrow",
    "card": "my card is 4111 1111 1111 1111, exp 12/29",
    "iban": "send it to GB82 WEST 1234 5698 7654 32 please",
    "ip": "the box at 192.168.10.24 and fe80::1ff:fe23:4567:890a are down",
    "secret": "use sk-proj-AbCdEf0123456789AbCdEf0123 then",
}
SECRETS = [
    "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJlX2hlcmU",
    "token xoxb-123456789012-abcdefghijkl",
    "ghp_0123456789abcdefghijklmnopqrstuvwxyzAB",
    "AKIAIOSFODNN7EXAMPLE",
    "api_key=9f8e7d6c5b4a39281706",
    "Bearer abc.def-ghi_jkl~mno",
]
LEAKS = [
    "jane.doe",
    "7946 0958",
    "4111 1111",
    "WEST 1234",
    "192.168.10.24",
    "fe80::",
    "sk-proj-AbCd",
]


@pytest.mark.parametrize("kind", sorted(CASES))
def test_each_kind_is_removed(kind: str) -> None:
    redacted = Redactor().redact(CASES[kind])
    assert redacted.counts.get(kind, 0) >= 1, redacted
    assert f"[{kind.upper()}]" in redacted.text
    assert not any(leak in redacted.text for leak in LEAKS)


@pytest.mark.parametrize("text", SECRETS)
def test_keys_and_bearer_tokens_are_removed(text: str) -> None:
    redacted = Redactor().redact(text)
    assert "[SECRET]" in redacted.text
    assert text.rsplit(maxsplit=1)[-1].rsplit("=", maxsplit=1)[-1] not in redacted.text


def test_look_alikes_that_fail_their_checksum_stay() -> None:
    text = "order 4111 1111 1111 1112 shipped; ref GB00 WEST 1234 5698 7654 32; v1.2.3.4"
    redacted = Redactor().redact(text)
    assert "[CARD]" not in redacted.text and "[IBAN]" not in redacted.text
    assert "v1.2.3.4" in redacted.text
    assert Redactor().redact("host 999.1.1.1").text == "host 999.1.1.1"  # not an address
    assert redacted.text.count("[PHONE]") == redacted.counts.get("phone", 0)
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert iban_ok("DE89 3704 0044 0532 0130 00") and not iban_ok("DE00 3704 0044 0532 0130 00")


def test_configured_patterns_and_everything_at_once() -> None:
    redactor = Redactor({"employee_id": r"\bEMP-\d{6}\b"})
    text = " ".join([*CASES.values(), *SECRETS, "badge EMP-004211"])
    redacted = redactor.redact(text)
    assert "[EMPLOYEE_ID]" in redacted.text and "EMP-004211" not in redacted.text
    assert not any(leak in redacted.text for leak in LEAKS)
    assert set(redacted.counts) >= {*CASES, "employee_id"} and redacted.total >= 13
    with pytest.raises(ValueError, match="redaction pattern"):
        Redactor({"bad": "("})


def test_plain_text_is_left_alone() -> None:
    text = "How do I reset my password? I tried twice at 10:30 on 2024-05-01, version 3.11.7."
    redacted = Redactor().redact(text)
    assert redacted.text == text and redacted.total == 0


# Each kind seen reaching the judge model (issue 12): (text, what must not survive, kind).
MISSED = {
    "stripe_secret": (
        "key sk_live_4eC39HqLyjWDarjtT1zdp7dc ok",
        "4eC39HqLyjWDarjtT1zdp7dc",
        "secret",
    ),
    "stripe_restricted": ("rk_live_51H8abcDEFghiJKLmnoP1234", "51H8abcDEFghiJKLmnoP1234", "secret"),
    "huggingface": (
        "HF hf_AbCdEfGhIjKlMnOpQrStUvWxYz012345",
        "AbCdEfGhIjKlMnOpQrStUvWxYz",
        "secret",
    ),
    "github_pat": (
        "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz0123",
        "11ABCDEFG0123456789",
        "secret",
    ),
    "short_sk": ("use sk-a1b2c3d4e5f6 here", "a1b2c3d4e5f6", "secret"),
    "aws_secret": (
        "aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "wJalrXUtnFEMI",
        "secret",
    ),
    "basic_auth": ("Authorization: Basic dXNlcjpodW50ZXIy", "dXNlcjpodW50ZXIy", "secret"),
    "pem_key": (
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA0Z3VS5JJcds3xfn\n"
        "-----END RSA PRIVATE KEY-----",
        "MIIEowIBAAKCAQEA0Z3VS5JJcds3xfn",
        "secret",
    ),
    "json_password": ('{"user": "jo", "password": "hunter2"}', "hunter2", "secret"),
    "card_dots": ("card 4111.1111.1111.1111 please", "4111.1111", "card"),
    "card_slashes": ("card 4111/1111/1111/1111 please", "1111/1111", "card"),
    "iban_lower": ("iban gb82 west 1234 5698 7654 32 thanks", "west 1234", "iban"),
}


@pytest.mark.parametrize("name", sorted(MISSED))
def test_each_kind_missed_before_is_removed(name: str) -> None:
    text, secret, kind = MISSED[name]
    redacted = Redactor().redact(text)
    assert secret not in redacted.text, redacted.text
    assert redacted.counts.get(kind, 0) >= 1


def test_a_pem_key_cut_off_before_its_end_is_removed_to_the_end() -> None:
    text = "here: -----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC"
    assert Redactor().redact(text).text == "here: [SECRET]"


@pytest.mark.parametrize(
    "text",
    [
        "my basic understanding of tokens",
        "max_tokens: 100, input_tokens=12",
        "released 2024.05.01, v1.2.3.4",
        "the sk-learn tutorial",
    ],
)
def test_words_near_the_new_patterns_stay(text: str) -> None:
    assert Redactor().redact(text).text == text


@pytest.mark.parametrize(("cut", "secret"), [(30, "jane.doe"), (24, "jane.d"), (400, "jane")])
def test_redact_first_then_cut(cut: int, secret: str) -> None:
    text = "contact me please at: jane.doe@example.com " + "x" * 500
    redacted = Redactor().redact_cut(text, cut, "…")
    assert secret not in redacted.text
    assert len(redacted.text) <= cut + 1 and redacted.text.endswith("…")
    assert redacted.counts == {"email": 1}


@pytest.mark.parametrize(
    "text", ["a." * 100_000, "a@" * 100_000, "x" * 200_000, '"' * 200_000, "token " * 30_000]
)
def test_long_hostile_texts_are_redacted_in_linear_time(text: str) -> None:
    # Not a timing assertion: with the old e-mail pattern the first case ran for minutes.
    assert Redactor().redact(text).text
