"""Encryption at rest for provider credentials (Fernet: AES-128-CBC + HMAC-SHA256).

The key comes from FIELD_ENCRYPTION_KEY; for local development only, when it is unset,
one is derived from SECRET_KEY (production refuses to start that way).
"""

from __future__ import annotations

import base64
import hashlib
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings


@lru_cache(maxsize=4)
def _fernet(key: str, secret_key: str) -> Fernet:
    if not key:
        key = base64.urlsafe_b64encode(hashlib.sha256(("tokenbill-fields:" + secret_key).encode()).digest()).decode()
    return Fernet(key.encode())


def fernet() -> Fernet:
    return _fernet(settings.FIELD_ENCRYPTION_KEY, settings.SECRET_KEY)


def encrypt(plaintext: str) -> str:
    return fernet().encrypt(plaintext.encode()).decode() if plaintext else ""


def decrypt(token: str) -> str:
    if not token:
        return ""
    try:
        return fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        raise ValueError("stored credential cannot be decrypted with the current FIELD_ENCRYPTION_KEY") from None
