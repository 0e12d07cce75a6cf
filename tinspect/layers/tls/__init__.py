"""TLS interception: the ClientHello reader, policy, handshakes, the CA, the layer."""
