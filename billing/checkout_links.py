"""Signed, expiring checkout links: {PUBLIC_BASE_URL}/checkout?ve_id=...&token=...

The token is a Django TimestampSigner signature of the VE's public id, so a link names
one VE, cannot be forged, and stops working after CHECKOUT_LINK_MAX_AGE seconds.
"""

from __future__ import annotations

from urllib.parse import urlencode

from django.conf import settings
from django.core import signing

_SALT = "tokenbill.checkout"
MAX_AGE_SECONDS = 7 * 24 * 3600


def _signer() -> signing.TimestampSigner:
    return signing.TimestampSigner(salt=_SALT)


def checkout_token(ve_public_id: str) -> str:
    # Only the signature part travels: the VE id is already in the URL.
    return _signer().sign(ve_public_id)[len(ve_public_id) + len(signing.TimestampSigner().sep):]


def checkout_url(ve_public_id: str) -> str:
    query = urlencode({"ve_id": ve_public_id, "token": checkout_token(ve_public_id)})
    return f"{settings.PUBLIC_BASE_URL}/checkout?{query}"


def verify_checkout_token(ve_public_id: str, token: str, max_age: int = MAX_AGE_SECONDS) -> bool:
    try:
        value = _signer().unsign(f"{ve_public_id}{signing.TimestampSigner().sep}{token}", max_age=max_age)
    except (signing.BadSignature, signing.SignatureExpired):
        return False
    # A token that itself holds a separator re-splits the signed text ("a" + "b:ts:sig" is
    # the signature of "a:b"): it must sign exactly this id, not an id it is a prefix of.
    return value == ve_public_id
