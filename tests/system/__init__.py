"""End-to-end tests with real processes: node daemons over TLS, the regtest node, the demo, the
examples and the benchmark harness.
"""
