"""The sign-in: the flow with a provider (flow.py), its modes, what the person must see and paste (prompts.py), the
codes never written (codes.py), the return URL, and the agent → controller callbacks (callbacks.py)."""
