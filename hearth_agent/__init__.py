"""hearth guest agent (stdlib only): starts and supervises the desktop, serves /health, runs sign-in flows.

Runs identically in a namespace sandbox (under bubblewrap) and inside VM images (under Debian's python3).
"""
