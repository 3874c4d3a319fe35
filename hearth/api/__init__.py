"""HTTP API (FastAPI): sessions, viewer WebSocket, health. OpenAPI at /docs."""
