"""Password hashing (argon2id), checking and generation."""

from __future__ import annotations

import secrets
import string

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

# argon2id at OWASP's recommended setting (19 MiB, 2 passes, 1 lane): about 0.1 s per
# login on a 2-core appliance. The library's default (64 MiB, 3 passes, 4 lanes) took
# 0.8 s there, which turns every guessed password into a second of CPU.
_hasher = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)
# Verified against when a user name is unknown, so that answering takes as long as for
# a real account and timing does not tell which names exist.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))
_ALPHABET = string.ascii_letters + string.digits


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and bool(password_hash)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    return _hasher.check_needs_rehash(password_hash)


def generate_password(length: int = 20) -> str:
    """A random password of letters and digits (about 119 bits at 20 characters)."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def password_problem(password: str, *, username: str, min_length: int) -> str | None:
    """Why `password` may not be chosen, or None."""
    if len(password) < min_length:
        return f"at least {min_length} characters, please"
    if len(password) > 1024:
        return "at most 1024 characters"
    if password.lower() == username.lower():
        return "must not be the user name"
    if len(set(password)) < 5:
        return "too repetitive: use more different characters"
    return None
