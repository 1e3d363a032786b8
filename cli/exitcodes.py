"""Exit codes of every ``peerdb`` command (documented in README and ``peerdb --help``)."""

OK = 0
ERROR = 1
"""Anything not covered below."""
USAGE = 2
"""Bad arguments or options (click's own convention)."""
UNREACHABLE = 3
"""The node's API could not be reached (not running, wrong address)."""
VERIFY_FAILED = 4
"""An audit verification or comparison found a problem."""
CONFIG = 5
"""A config, consortium or key file is missing or wrong."""
REJECTED = 6
"""The node refused the request (invalid transaction, forbidden namespace, full mempool)."""
TIMEOUT = 7
"""--wait gave up before the requested view was reached (the transaction is still pending)."""
RESTORED = 8
"""`node run`: the data directory was copied or restored from a backup; start it once with
--accept-restored after reading docs/operations-restore.md (restarting as it is fails again)."""
REMOVED = 9
"""`node run`: this member was removed from the consortium; its node has nothing left to do."""
