"""Egress of sandboxes: who goes out, where never, DNS on the bridge (policy, rules, gate, dns)."""
