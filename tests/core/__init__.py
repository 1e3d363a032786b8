"""Tests of the consensus core (peerdb/core): codec, model, keys, state machine, validation, fork
choice and the governance rules.
"""
