"""Private key files: one Ed25519 seed per file, readable by its owner only.

A member key signs blocks for the firm; a client key signs the firm's transactions. Both are
stored the same way. We refuse to load a key file that group or others can read, as ssh does:
a leaked member key lets anyone double-sign in the firm's name and get it excluded.
"""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path

from .core.errors import ConfigError
from .core.keys import SigningKey

KINDS = ("member", "client")


def write_key(path: str | Path, key: SigningKey, kind: str = "member", overwrite: bool = False) -> None:
    path = Path(path)
    if kind not in KINDS:
        raise ConfigError(f"key kind: {kind!r} is not one of {KINDS}")
    if path.exists() and not overwrite:
        raise ConfigError(f"{path}: already exists; refusing to overwrite a key (use --force to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    text = (
        "# PeerDB Ed25519 private key. Keep it secret: whoever holds it signs in your name.\n"
        f'kind = "{kind}"\n'
        f'public = "{key.public.hex()}"\n'
        f'seed = "{key.seed.hex()}"\n'
    )
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)


def read_key(path: str | Path, check_permissions: bool = True) -> tuple[SigningKey, str]:
    """Load a key file; returns (key, kind). Clear ConfigError for every problem."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ConfigError(f"{path}: key file not found (create one with `peerdb keygen --out {path}`)") from None
    if check_permissions and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{path}: key file is accessible by group or others (mode {stat.S_IMODE(mode):o}); "
            f"run `chmod 600 {path}`")
    try:
        data = tomllib.loads(path.read_text(encoding="ascii"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not a PeerDB key file ({exc})") from None
    kind = data.get("kind", "member")
    if kind not in KINDS:
        raise ConfigError(f"{path}: kind {kind!r} is not one of {KINDS}")
    try:
        seed = bytes.fromhex(str(data["seed"]))
    except (KeyError, ValueError):
        raise ConfigError(f"{path}: missing or invalid 'seed'") from None
    if len(seed) != 32:
        raise ConfigError(f"{path}: 'seed' must be 32 bytes")
    key = SigningKey(seed)
    public = data.get("public")
    if public is not None and public != key.public.hex():
        raise ConfigError(f"{path}: 'public' does not match the seed; the file is corrupt")
    return key, str(kind)
