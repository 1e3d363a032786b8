"""Verified reads: proofs of a key's value that a client checks trusting no node.

* :mod:`.format` — the read proof (docs/verified-reads.md): what it carries and its canonical
  CBOR, decoded through the hardened decoder within named limits;
* :mod:`.build` — what a node makes a proof from: its store (headers, signatures, evidence,
  anchor proofs, the state tree) at a best-chain height;
* :mod:`.verify` — the client side: the consortium file is all it trusts. It checks the
  governance path the proof carries (member and key changes since genesis), the signatures, the
  state tree path, and the anchor proof offline, says which view the proof reaches, and refuses
  any item that does not hold, naming it.

Nothing here imports trio or lmdb except :mod:`.build`, which reads a :class:`peerdb.store.Store`.
"""
