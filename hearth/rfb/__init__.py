"""A small RFB (VNC) client: the readiness gate's handshake and the tests' first-frame check."""
