"""Tests of the member network (peerdb/net): frames, hello, certificates, TLS, queues and
PeerNetwork on the memory hub.
"""
