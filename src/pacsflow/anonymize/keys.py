"""Keyed pseudonyms: HMAC-SHA-256 under the project's secret gives the same UIDs, IDs and date shifts
on every run and machine, and nobody without the secret can confirm a guess (unlike a plain hash)."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
from dataclasses import dataclass, field

from pacsflow.errors import ConfigError

#: a UID root: components without leading zeros, short enough to leave room for 20 digits of our own
_ROOT = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
UID_MAX = 64
_MIN_DIGITS = 20
#: what `{hash}` gives a pseudonym format: enough hex digits that millions of patients never collide
HASH_DIGITS = 16


def new_secret() -> str:
    """A fresh project secret (256 bits, URL-safe text) for `[anonymize] secret`."""
    return secrets.token_urlsafe(32)


def check_uid_root(root: str) -> str:
    """ROOT if it is a valid UID root with room for our digits; raises ConfigError otherwise."""
    if not _ROOT.fullmatch(root) or len(root) > UID_MAX - 1 - _MIN_DIGITS:
        raise ConfigError(
            f"uid_root {root!r}: give a UID root like 2.25 or 1.2.826.0.1.3680043.10.1234 "
            f"(digits and dots, no leading zeros, at most {UID_MAX - 1 - _MIN_DIGITS} characters)"
        )
    return root


def check_format(pattern: str) -> str:
    """PATTERN if it is a pseudonym format using {n} and/or {hash}; raises ConfigError otherwise."""
    fields = {name for _, name, _, _ in string.Formatter().parse(pattern) if name is not None}
    if not fields or not fields <= {"n", "hash"}:
        raise ConfigError(
            f"pseudonym format {pattern!r}: use {{n}} (a counter, e.g. ANON-{{n:06d}}) "
            "and/or {hash} (e.g. ANON-{hash:.12})"
        )
    try:
        sample = pattern.format(n=1, hash="0" * HASH_DIGITS)
    except (ValueError, IndexError) as exc:
        raise ConfigError(f"pseudonym format {pattern!r}: {exc}") from None
    if len(sample) > 64:
        raise ConfigError(f"pseudonym format {pattern!r}: longer than 64 characters (a PatientID)")
    return pattern


@dataclass(frozen=True)
class Keys:
    """Derivations under one secret. Each purpose has its own domain, so a UID never equals an ID."""

    secret: bytes = field(repr=False)  # never in a log line or a traceback's locals
    uid_root: str = "2.25"
    max_shift_days: int = 3650

    @classmethod
    def from_text(cls, secret: str | None, uid_root: str = "2.25", max_shift_days: int = 3650) -> Keys:
        """Raises ConfigError when the secret is missing or too short, or the root is not valid."""
        if not secret:
            raise ConfigError(
                "de-identification needs a project secret: run `pacsflow anonymize --new-secret` and put "
                "it in pacsflow.toml ([anonymize] secret = ...) or PACSFLOW_ANONYMIZE__SECRET"
            )
        if len(secret) < 16:
            raise ConfigError("the anonymize secret is too short (at least 16 characters; see --new-secret)")
        return cls(secret.encode(), check_uid_root(uid_root), max_shift_days)

    def digest(self, purpose: str, value: str) -> bytes:
        return hmac.new(self.secret, f"{purpose}\0{value}".encode(), hashlib.sha256).digest()

    def uid(self, original: str) -> str:
        """The UID that replaces ORIGINAL: valid, at most 64 characters, under the configured root."""
        number = int.from_bytes(self.digest("uid", original), "big")
        if self.uid_root == "2.25":  # a UUID-sized integer, as PS3.5 B.2 describes for the 2.25 root
            return f"2.25.{number >> 128}"
        digits = str(number)[: UID_MAX - len(self.uid_root) - 1]
        return f"{self.uid_root}.{digits}"  # a 256-bit number's first digit is never 0

    def patient_hash(self, patient_id: str) -> str:
        """The hex text a `{hash}` pseudonym format takes its digits from."""
        return self.digest("patient", patient_id).hex().upper()[:HASH_DIGITS]

    def accession(self, original: str) -> str:
        """An AccessionNumber (SH, at most 16 characters) standing for ORIGINAL."""
        return self.digest("accession", original).hex().upper()[:16]

    def identifier(self, original: str, length: int = 16) -> str:
        """Any other ID that must stay linkable (RequestedProcedureID...), LENGTH characters."""
        return self.digest("id", original).hex().upper()[:length]

    def date_shift(self, patient_id: str) -> int:
        """Days every date of this patient moves: the same for all of their studies, never 0."""
        number = int.from_bytes(self.digest("date-shift", patient_id)[:8], "big")
        return -(number % self.max_shift_days + 1)
