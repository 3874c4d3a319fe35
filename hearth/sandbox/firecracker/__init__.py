"""Firecracker microVM sandboxes: `plan` (pure), `api` (the API socket client), `driver` (side effects).

Proven here by contract tests against Firecracker's OpenAPI spec and a stand-in API server; see
docs/firecracker.md for running it on a KVM host.
"""

from hearth.sandbox.firecracker.driver import FirecrackerDriver
from hearth.sandbox.firecracker.plan import ApiCall, JailerConfig, MachineShape, Plan

__all__ = ["ApiCall", "FirecrackerDriver", "JailerConfig", "MachineShape", "Plan"]
