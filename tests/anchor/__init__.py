"""Tests of Bitcoin anchoring (peerdb/anchor): headers, txoutproofs, anchor proofs, the RPC client,
the planner and the service.
"""
