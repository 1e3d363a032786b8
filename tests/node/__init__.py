"""Tests of the node (peerdb/node): the engine, the service on the memory hub, the client API, alerts, governance and anchoring as a node runs them."""
