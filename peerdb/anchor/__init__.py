"""Bitcoin anchoring: publish Merkle roots of PeerDB block hashes in OP_RETURN outputs, and
build and verify proofs of those anchors offline.

Modules: :mod:`.proof` (AnchorProof, verification, batch builder), :mod:`.txoutproof` and
:mod:`.headers` (consensus-exact Bitcoin parsing), :mod:`.planner` (pure schedule/state machine),
:mod:`.service` (the trio service), :mod:`.rpc` (Bitcoin Core JSON-RPC client),
:mod:`.regtest` (a throw-away regtest node for tests and the demo).
"""
