"""One address per person: the upstream egress proxy (HEARTH_EGRESS_PROXY), each user's sticky port on it, and the
extra CA certificates (HEARTH_EXTRA_CA_CERTS) sandboxes trust. The proxy's credentials never leave this folder in
clear except inside a sandbox's sealed agent-config document."""
