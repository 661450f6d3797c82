"""The kit's wire: the protocol's typed messages and frames, the client connection, the shared-secret handshake and TLS."""
