"""Session service: the state machine and store of one browser session (its sandbox: hearth/lifecycle)."""
