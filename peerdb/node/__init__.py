"""The node daemon: wires the consensus core, the store, the network, anchoring and the API."""
