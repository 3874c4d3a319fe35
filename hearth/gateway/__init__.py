"""Gateway: the one authenticated WebSocket per viewer, relayed to the sandbox's RFB port inside the fabric."""
