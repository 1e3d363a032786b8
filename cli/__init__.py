"""The ``peerdb`` command line: operators, the firm's analysts, and auditors."""
