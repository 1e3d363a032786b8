"""Every protocol limit, named, with the reason for its value.

These are consensus rules: a block that breaks one is invalid for every member, so a change
here is a protocol version change.
"""

PROTOCOL_VERSION = 2
"""Wire and block format version; a peer with another version is refused at the hello. Version 2
replaced the running state hash by a state tree with per-key proofs and added the namespace
transaction root to the header (docs/protocol.md §7, §21); a version-1 chain cannot be continued."""

MAX_FRAME_BYTES = 16 * 1024 * 1024
"""Largest network frame. Fits the largest block (MAX_BLOCK_BYTES) plus its envelope; anything
bigger is an attack or a bug, and bounding it bounds the memory one peer can make us allocate."""

MAX_FRAME_ITEMS = 32_768
"""CBOR items in one frame (every head counts: strings, integers, arrays, map keys and values).

The byte limit alone does not bound decoding: an item can be one byte and costs about a
microsecond to decode, walk and re-encode, so 16 MiB of empty arrays took 13-21 s and 1.3 GB.
The largest legitimate frame is a ``txs`` message of MAX_BLOCK_TXS transactions, 20,007 items
(the envelope map and its key, the message map, its two keys and its type, the array, and one
byte string per transaction); next come a ``blocks`` answer of 64 blocks with 64 signatures
each (16,585), a full ``sigs`` message (16,391: four items per signature), an ``anchor`` message
(4,103), a ``status`` (547); every other frame has fewer than 20. The limit is the next power
of two above 20,007. The pre-scan refuses a frame over it after at most this many steps; a frame
within it decodes in tens of milliseconds whatever its shape (see docs/protocol.md §18)."""

MAX_CBOR_DEPTH = 12
"""Deepest nesting any PeerDB object uses is 6 (block > txs > tx > ops > op > value); 12 leaves
room for extensions while keeping recursive decoding far from Python's recursion limit."""

MAX_BLOCK_TXS = 20_000
"""Hard ceiling on transactions per block; the consortium's max_block_txs must be at most this.
At ~64 us per Ed25519 verification a full block costs each member ~1.3 s of one core to check,
which stays well under the default turn timeout."""

MAX_BLOCK_ITEMS = 32_768
"""CBOR items at a block's own level: a valid block ``[header, [tx, ...], [evidence, ...]]`` has
at most 4 + MAX_BLOCK_TXS + 6 * MAX_EVIDENCE_PER_BLOCK = 20,388 (each transaction is one byte
string there, decoded on its own under MAX_TX_ITEMS; each evidence is an array of five). Bounds
the decoding of a block's envelope the way MAX_FRAME_ITEMS bounds a frame's; a block with more
items is invalid whatever they are, so the bound refuses nothing valid."""

MAX_BLOCK_BYTES = 12 * 1024 * 1024
"""Hard ceiling on a block's encoded size (consortium's max_block_bytes must be at most this)."""

MAX_TX_BYTES = 256 * 1024
"""Largest encoded transaction: a few maximal values plus their keys and the envelope."""

MAX_OPS_PER_TX = 64
"""Operations in one atomic transaction; enough for a multi-key update, small enough that one
transaction cannot monopolise a block."""

MAX_TX_ITEMS = 1024
"""CBOR items in an encoded transaction or its body. A valid body has at most 7 + 5 *
MAX_OPS_PER_TX = 327 (the body array, its six fields, and per op an array head and four
fields); twice that, rounded up to a power of two, still lets a body a few operations over the
limit be refused with the precise error, and keeps refusing any one transaction to about a
millisecond, however many of them a block or a ``txs`` message carries."""

MAX_NAMESPACE_LEN = 64
"""Namespace names are identifiers (``books``, ``exposures.bank-a``), not data."""

MAX_KEY_BYTES = 512
"""UTF-8 bytes of a key: room for paths and composite ids, bounded for index pages."""

MAX_VALUE_BYTES = 64 * 1024
"""Bytes of a value. PeerDB records facts and digests, not documents; bigger blobs belong in
the firm's own storage with their hash recorded here."""

MAX_EVIDENCE_PER_BLOCK = 64
"""Double-sign evidence objects carried by one block; more culprits than that is a consortium
in ruins, and the rest fit in the next block."""

MAX_HEADER_BYTES = 1024
"""An encoded block header: ten fields, three of them 32-byte hashes and a member name of at
most MAX_NAME_LEN bytes, comes to under 250 bytes; the bound leaves room and stops a peer from
making us hash or decode a large blob as a header."""

MAX_EVIDENCE_BYTES = 4096
"""One encoded evidence item: two headers (each at most MAX_HEADER_BYTES), two signatures and a
member name."""

MAX_REASON_LEN = 500
"""Characters in an objection's reason: a sentence for a person, not a document."""

MAX_NAME_LEN = 64
"""Member and consortium names."""

MAX_MEMBERS = 64
"""Members of one consortium: every member verifies every signature, so cost grows with it."""

MAX_CLOCK_SKEW_MS = 60_000
"""Upper bound for the consortium's clock_skew_ms parameter."""

MAX_TX_TTL_MS = 7 * 24 * 3600 * 1000
"""A transaction may name an expiry at most this far after the block that includes it, which
bounds how long members must remember its id to refuse a replay."""

MAX_ROUND = 1_000_000
"""Rounds per height; a sane bound so round arithmetic never overflows a u64."""

HASH_LEN = 32
SIG_LEN = 64
KEY_LEN = 32
