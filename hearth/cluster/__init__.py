"""Many hosts: node registration and heartbeats, death and drain (`nodes`), placement (`placement`), the edge's
routing of API calls and viewer WebSockets to the node holding a session (`edge`)."""
