"""Tests of the node (peerdb/node): the engine, the service on the memory hub, the client API, and
alerts, governance and anchoring as a running node handles them.
"""
