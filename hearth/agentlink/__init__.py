"""The controller's side of the guest agent: calls into the agent, and the callback endpoint the agent calls."""
