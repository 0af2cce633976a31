"""The ASGI app with billing switched off (NullBiller): bench only, to show what the
gateway itself costs next to the full stack."""

from billing import gate
from tokenbill.asgi import application  # noqa: F401

gate.set_biller(gate.NullBiller())
