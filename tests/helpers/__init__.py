"""Shared test support: the seeded test consortium, chain and bundle builders, the in-process
cluster, the regtest node and a store worker process.
"""
