"""The consensus core of PeerDB.

WARNING: CONSENSUS-CRITICAL CODE. Everything in this package decides which bytes are valid,
what they hash to, who may sign what, and which chain wins. Two members running different
versions of this package on the same data can reach different conclusions and split the
consortium. Change it only together with ``docs/protocol.md``, the test vectors under
``tests/data/`` and the protocol version in :mod:`peerdb.core.limits`.

Rules of the house, checked by tests:

* no I/O: this package imports no trio, no lmdb, no sockets, no clock; time and consortium
  parameters are passed in;
* every value object is frozen and validates itself on construction; hashes and signatures are
  always over canonical bytes;
* every failure raises an error from :mod:`peerdb.core.errors` naming the field and the reason.
"""
