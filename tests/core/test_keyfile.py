"""Key files: owner-only, self-checking, with a clear ConfigError for every problem."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from peerdb.core.errors import ConfigError
from peerdb.keyfile import read_key, write_key

from tests.helpers.core import assert_names, seed_key

KEY = seed_key("keyfile")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("kind", ["member", "client"])
def test_write_then_read(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "sub" / "dir" / "key.toml"
    write_key(path, KEY, kind)
    assert mode(path) == 0o600
    text = path.read_text()
    assert f'public = "{KEY.public.hex()}"' in text and f'kind = "{kind}"' in text
    key, read_kind = read_key(path)
    assert key == KEY and key.public == KEY.public and read_kind == kind


def test_refuses_to_overwrite_unless_told(tmp_path: Path) -> None:
    path = tmp_path / "key.toml"
    write_key(path, KEY)
    other = seed_key("other")
    with pytest.raises(ConfigError) as info:
        write_key(path, other)
    assert_names(info.value, str(path), "already exists", "refusing to overwrite")
    assert read_key(path)[0] == KEY
    os.chmod(path, 0o644)
    write_key(path, other, overwrite=True)
    assert read_key(path)[0] == other
    assert mode(path) == 0o600  # the replaced file is owner-only again


def test_unknown_kind_is_refused_on_write(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        write_key(tmp_path / "key.toml", KEY, "admin")
    assert_names(info.value, "key kind", "'admin'")
    assert not (tmp_path / "key.toml").exists()


@pytest.mark.parametrize("bad_mode", [0o644, 0o640, 0o604, 0o660, 0o700 | 0o007])
def test_refuses_a_key_others_can_read(tmp_path: Path, bad_mode: int) -> None:
    path = tmp_path / "key.toml"
    write_key(path, KEY)
    os.chmod(path, bad_mode)
    with pytest.raises(ConfigError) as info:
        read_key(path)
    assert_names(info.value, str(path), "accessible by group or others", f"{bad_mode:o}", "chmod 600")
    assert read_key(path, check_permissions=False)[0] == KEY


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        read_key(tmp_path / "none.toml")
    assert_names(info.value, "none.toml", "not found", "peerdb keygen")


def write_raw(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    os.chmod(path, 0o600)
    return path


SEED = KEY.seed.hex()
PUBLIC = KEY.public.hex()


@pytest.mark.parametrize("content, fragments", [
    (b"kind = \n", ("not a PeerDB key file",)),
    (b"\xff\xfe binary", ("not a PeerDB key file",)),
    (b'seed = "\xc3\xa9"\n', ("not a PeerDB key file",)),
    (b'kind = "member"\n', ("missing or invalid 'seed'",)),
    (b'seed = "not hex"\n', ("missing or invalid 'seed'",)),
    (b'seed = "abcd"\n', ("'seed' must be 32 bytes",)),
    (f'kind = "root"\nseed = "{SEED}"\n'.encode(), ("kind 'root' is not one of",)),
    (f'seed = "{SEED}"\npublic = "{"00" * 32}"\n'.encode(), ("'public' does not match the seed", "corrupt")),
])
def test_corrupt_files(tmp_path: Path, content: bytes, fragments: tuple[str, ...]) -> None:
    path = write_raw(tmp_path / "key.toml", content)
    with pytest.raises(ConfigError) as info:
        read_key(path)
    assert_names(info.value, str(path), *fragments)


def test_minimal_file_defaults_to_a_member_key(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "key.toml", f'seed = "{SEED}"\n'.encode())
    assert read_key(path) == (KEY, "member")
    path = write_raw(tmp_path / "key2.toml", f'seed = "{SEED}"\npublic = "{PUBLIC}"\nkind = "client"\n'.encode())
    assert read_key(path) == (KEY, "client")
