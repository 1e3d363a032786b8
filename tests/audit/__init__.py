"""Tests of the auditor (peerdb/audit): the bundle format, export, verification and diff."""
