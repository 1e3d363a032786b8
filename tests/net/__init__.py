"""Tests of the member network (peerdb/net): frames, hello, certificates, TLS, queues, PeerNetwork on the memory hub."""
