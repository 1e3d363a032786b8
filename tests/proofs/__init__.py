"""Tests of verified reads (peerdb/proofs): read proofs built from a store, checked by the client-side verifier."""
