"""PII redaction: what leaves the box (an LLM judge's prompt, a notification) never carries
e-mail addresses, phone numbers, payment cards, IBANs, IP addresses, API keys or bearer
tokens, nor what a configured pattern matches.

Candidates are found by pattern and confirmed where a checksum exists (Luhn for cards, ISO
7064 mod 97 for IBANs, `ipaddress` for IPs), so an order number is not taken for a card.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field


class PiiKind(enum.StrEnum):
    SECRET = "secret"  # noqa: S105 - a category name, not a password
    EMAIL = "email"
    IBAN = "iban"
    CARD = "card"
    IP = "ip"
    PHONE = "phone"
    CUSTOM = "custom"


@dataclass(frozen=True, slots=True)
class Redaction:
    text: str
    counts: Mapping[str, int] = field(default_factory=dict)  # kind (or pattern name) -> count

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(candidate: str) -> bool:
    iban = candidate.replace(" ", "").upper()
    if not 15 <= len(iban) <= 34:
        return False
    moved = iban[4:] + iban[:4]
    try:
        number = int("".join(str(int(ch, 36)) for ch in moved))
    except ValueError:
        return False
    return number % 97 == 1


def _ip_ok(candidate: str) -> bool:
    try:
        ipaddress.ip_address(candidate)
    except ValueError:
        return False
    return True


# A key naming a secret ends with one of these (aws_secret_access_key, X-Api-Token, db_password).
# No `\b[\w.-]*` before it: that rescans every word from each boundary (quadratic).
_SENSITIVE_NAMES = (
    r"(?:api[_-]?key|secret|token|passw(?:or)?d|passwd|passphrase|access[_-]?key"
    r"|private[_-]?key|credentials?)"
)
_SECRET = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)"
    r"|(?i:\b(?:proxy-)?authorization\s*[:=]\s*basic\s+)[A-Za-z0-9+/]{4,}={0,2}"
    r"|(?i:\bbearer\s+)[A-Za-z0-9\-._~+/]{8,}=*"  # Authorization: Bearer <token>
    r"|\b(?:sk|pk|rk)-(?:proj-|live-|test-|ant-)?[A-Za-z0-9_\-]{16,}"  # OpenAI, Anthropic, ...
    r"|\b(?:sk|pk|rk)-(?=[A-Za-z_\-]*\d)[A-Za-z0-9_\-]{10,}"  # short ones, with a digit
    r"|\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{10,}"  # Stripe
    r"|\bxox[abposr]-[A-Za-z0-9-]{10,}"  # Slack
    r"|\bgh[pousr]_[A-Za-z0-9]{30,}"  # GitHub
    r"|\bgithub_pat_[A-Za-z0-9_]{20,}"  # GitHub fine-grained
    r"|\bhf_[A-Za-z0-9]{20,}"  # Hugging Face
    r"|\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"  # AWS access key ids
    r"|\bAIza[0-9A-Za-z\-_]{35}"  # Google
    r"|\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"  # JWTs
    # JSON: "password": "...", any length, escapes included.
    rf"|(?i:{_SENSITIVE_NAMES}\"\s*:\s*)\"(?:[^\"\\]|\\.)*\""
    rf"|(?i:{_SENSITIVE_NAMES}\b[\"']?\s*[:=]\s*)[\"']?[^\s\"',;]{{8,}}"
)
# Lengths bounded as in RFC 5321: unbounded, `a.a.a...` without an @ took seconds (quadratic).
_EMAIL = re.compile(
    r"\b[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){0,8}\.[A-Za-z]{2,24}\b"
)
_IBAN = re.compile(r"(?i)\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b")
_CARD = re.compile(
    r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d-])"
    # 4-4-4-4(-3) or 4-6-5 with one separator throughout: not a date, a version or an address
    r"|(?<![\w./])\d{4}([./])(?:\d{4}\1\d{4}\1\d{4}(?:\1?\d{1,3})?|\d{6}\1\d{5})(?![\w./])"
)
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")  # not v1.2.3.4
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]?\d{2,4}){2,4}(?!\w)"
)


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


_DATE = re.compile(r"\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{2,4}")


def _phone_ok(candidate: str) -> bool:
    return 7 <= len(_digits(candidate)) <= 15 and not _DATE.fullmatch(candidate.strip())


_BUILTIN: list[tuple[PiiKind, re.Pattern[str], Callable[[str], bool]]] = [
    (PiiKind.SECRET, _SECRET, lambda s: True),
    (PiiKind.EMAIL, _EMAIL, lambda s: True),
    (PiiKind.IBAN, _IBAN, iban_ok),
    (PiiKind.CARD, _CARD, lambda s: 13 <= len(_digits(s)) <= 19 and luhn_ok(_digits(s))),
    (PiiKind.IP, _IPV4, _ip_ok),
    (PiiKind.IP, _IPV6, lambda s: s.count(":") >= 2 and _ip_ok(s)),
    (PiiKind.PHONE, _PHONE, _phone_ok),
]


# Scanned past a cut, so a finding that straddles it is seen whole (a PEM key is ~3.3k chars).
CUT_MARGIN_CHARS = 4096


class Redactor:
    """Replaces each finding with `[KIND]` (or `[NAME]` for a configured pattern)."""

    def __init__(self, patterns: Mapping[str, str] | None = None) -> None:
        try:
            self._custom = [(name, re.compile(p)) for name, p in (patterns or {}).items()]
        except re.error as exc:
            raise ValueError(f"redaction pattern: {exc}") from exc

    def redact(self, text: str) -> Redaction:
        counts: Counter[str] = Counter()
        # Configured patterns first: they are the user's own, most specific knowledge.
        for name, pattern in self._custom:
            text, n = pattern.subn(f"[{name.upper()}]", text)
            if n:
                counts[name] += n
        for kind, pattern, confirm in _BUILTIN:

            def replace(
                match: re.Match[str], kind: PiiKind = kind, confirm: Callable[[str], bool] = confirm
            ) -> str:
                found = match.group(0)
                if not confirm(found):
                    return found
                counts[kind.value] += 1
                return f"[{kind.value.upper()}]"

            text = pattern.sub(replace, text)
        return Redaction(text, dict(counts))

    def redact_cut(self, text: str, max_chars: int, marker: str = "") -> Redaction:
        """Redact, then cut to `max_chars` (adding `marker` when cut): cutting first would
        leave half a finding (`jane.doe@exa`) that no pattern matches any more. Only the
        first `max_chars + CUT_MARGIN_CHARS` are scanned: all 200,000 allowed characters
        would take about half a second."""
        window = text[: max_chars + CUT_MARGIN_CHARS]
        redacted = self.redact(window)
        if len(redacted.text) <= max_chars and len(window) == len(text):
            return redacted
        return Redaction(redacted.text[:max_chars] + marker, redacted.counts)
