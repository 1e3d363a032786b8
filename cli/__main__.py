"""`python -m cli` is `peerdb` (used where the console script may not be on PATH)."""

from .main import main

main()
