"""Tests of the LMDB store (peerdb/store): round trips, reorgs, the startup check, the signing
guard and crash atomicity.
"""
