"""hearth guest agent (stdlib only): starts and supervises the desktop, serves /health and a small authenticated API.

Runs identically in a namespace sandbox (under bubblewrap) and inside VM images (under Debian's /usr/bin/python3).
Modules: `config` (the JSON config), `recipes` (the desktop's services: Xvnc → openbox → chromium), `supervisor`
(starts them in order, restarts), `server` (HTTP), `signin` → `loginrun` (a CLI sign-in) → `loginscreen` (its screen).
"""
