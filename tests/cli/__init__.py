"""Tests of the ``peerdb`` command line (cli/): arguments, errors and exit codes, and commands
against a running node.
"""
