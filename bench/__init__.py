"""Benchmark harness: PeerDB beside etcd and pysyncobj, against the machine's signature bound.

Run it as ``python bench/run.py [--quick|--smoke]`` from the repository root. Nothing here is
imported by PeerDB itself; speed is measured here and reported, never asserted in tests.
"""
