"""The sandbox network fabric: its own network namespace with a bridge, veth/TAP ports, IPAM and nftables NAT."""
