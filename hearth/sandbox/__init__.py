"""Sandbox drivers: `netns` (namespace desktop), `qemu`, `firecracker` — one small protocol."""
