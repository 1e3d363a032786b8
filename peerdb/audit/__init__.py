"""The auditor: export a member's books as a self-contained bundle, verify one without trusting
anyone, and compare two members' bundles.

An auditor (a regulator, an investor, a member's own compliance team) holds only the bundle and,
optionally, a Bitcoin node of its own. Everything the bundle claims is recomputed from the
consortium file inside it: hash links, turns, every signature, the state machine, evidence and
exclusions, fork choice, views, and the anchor proofs down to Bitcoin headers.

Modules:

* :mod:`.bundle` — the file format (docs/auditor.md): framing, items, running hash, writer, parser;
* :mod:`.export` — what a node writes: a consistent snapshot of its tree, then blocks in batches;
* :mod:`.sigpool` — Ed25519 checks in worker threads (libsodium releases the GIL);
* :mod:`.replay` — the claimed best chain's state, and views of it at any fork point;
* :mod:`.verify` — the verifier (:class:`~.verify.BundleVerifier`; blocks decoded by
  :mod:`peerdb.core.blockdecode`) and its report;
* :mod:`.diff` — "two sets of books": the first divergence between two bundles.

Nothing here imports trio or lmdb: the node side hands the exporter plain objects.
"""
