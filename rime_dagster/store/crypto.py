"""Encryption at rest for connector credentials (cryptography's Fernet: AES-128-CBC + HMAC-SHA256).

The key is derived from RIME_SECRET_KEY, or from the key generated into RIME_HOME
(0600) when that is unset; the API and the Dagster code location derive the same one.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from rime_dagster.settings import Settings


class CredentialsUnreadable(Exception):
    """Stored credentials cannot be decrypted (the secret key changed)."""


def _derive(secret: str, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"rime", info=purpose).derive(secret.encode())


class CredentialCipher:
    def __init__(self, secret: str):
        self._fernet = Fernet(base64.urlsafe_b64encode(_derive(secret, b"rime.credentials.v1")))

    @classmethod
    def from_settings(cls, settings: Settings) -> CredentialCipher:
        return cls(settings.signing_key())

    def encrypt(self, values: dict[str, Any]) -> str:
        return self._fernet.encrypt(json.dumps(values).encode()).decode()

    def decrypt(self, token: str) -> dict[str, Any]:
        try:
            return json.loads(self._fernet.decrypt(token.encode()))
        except InvalidToken:
            raise CredentialsUnreadable(
                "Stored credentials cannot be decrypted with the current RIME_SECRET_KEY; set them again."
            ) from None
