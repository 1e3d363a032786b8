"""Shared test support: the seeded test consortium, chain builders, the in-process cluster, the regtest node, a store worker process."""
