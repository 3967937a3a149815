"""Referral codes and their QR images.

A code is 8 characters of a 31-letter alphabet without the look-alikes 0/O, 1/I/L: about 8.5e11
codes, drawn with `secrets`, so a guessed code hits a real one about once in a million tries even
with a million partners (and every guess is a refused registration in the logs). People type them
from a poster or read them over the phone, so input is forgiving: case, spaces and dashes are
ignored, and the look-alikes are read as the letter they stand for.
"""

from __future__ import annotations

import io
import secrets

import segno

ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
LENGTH = 8
_LOOK_ALIKES = str.maketrans({"0": "O", "1": "I", "L": "I"})  # then refused: O and I are not in it


def new_code() -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(LENGTH))


def normalize(text: str) -> str:
    """What the user typed -> the code as issued ("abcd-2345" -> "ABCD2345"); may not be a valid code."""
    return "".join(text.split()).replace("-", "").upper()


def is_well_formed(code: str) -> bool:
    return len(code) == LENGTH and all(c in ALPHABET for c in code)


def looks_like(code: str) -> str:
    """A hint for a code with look-alike characters: which letters are not in codes."""
    bad = sorted({c for c in code.translate(_LOOK_ALIKES) if c not in ALPHABET})
    return f"codes never contain {', '.join(bad)}" if bad else ""


def qr_payload(template: str, code: str) -> str:
    return template.format(code=code)


def qr_svg(payload: str) -> str:
    buffer = io.BytesIO()
    # Error correction M survives a smudged poster; scale 4 gives a ~150 px image for a 29x29 code.
    segno.make_qr(payload, error="m").save(buffer, kind="svg", scale=4, xmldecl=False, svgns=True)
    return buffer.getvalue().decode()


def qr_png(payload: str) -> bytes:
    buffer = io.BytesIO()
    segno.make_qr(payload, error="m").save(buffer, kind="png", scale=8)
    return buffer.getvalue()
