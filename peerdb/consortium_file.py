"""Reading the consortium file (TOML, see ``configs/consortium.toml``) from disk.

The core checks the text (:func:`peerdb.core.consortium.parse_consortium_toml`) and touches no
file system; this is the reading half, for the node config, the command line, the demo and tools.
Writing a new file: :mod:`peerdb.setup_files`.
"""

from __future__ import annotations

from pathlib import Path

from .core.consortium import Consortium, parse_consortium_toml
from .core.errors import ConfigError


def load_consortium(path: str | Path) -> Consortium:
    """Read and check a consortium file; every problem is a ConfigError naming the file and field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: consortium file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read consortium file ({exc})") from None
    return parse_consortium_toml(text, str(path))
