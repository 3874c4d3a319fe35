"""`hearth edge`: stateless, any number of replicas — the public API, the viewer page, placement, and the routing of
each API call and viewer WebSocket to the node that holds the session (its row's `node_id` in the shared store)."""
