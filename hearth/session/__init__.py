"""Session service: the state machine and readiness gates of one browser session."""
