"""A sandbox's way out (hearth/egress): whether it gets one, and which names it may resolve (pure)."""

from __future__ import annotations

from collections.abc import Mapping

from hearth.config import Settings
from hearth.egress.policy import Grant, wants_egress
from hearth.lifecycle.sandbox import Kind, Sandbox
from hearth.proxy.plan import EgressPlan


def domains(
    s: Settings, by_provider: Mapping[str, tuple[str, ...]], plan: EgressPlan, providers: tuple[str, ...]
) -> tuple[str, ...] | None:
    """The names a sandbox may resolve under HEARTH_EGRESS_POLICY=provider (None: any): its providers' domains
    (`by_provider`: digest → egress_domains); without a provider (a CLI sandbox, a pooled one not yet handed out):
    every provider's."""
    if s.egress_policy != "provider":
        return None
    chosen = providers or tuple(by_provider)
    names = {d for p in chosen for d in by_provider.get(p, ())}
    names |= plan.proxy_names()  # the agent's local proxy resolves the upstream proxy's name there
    return tuple(sorted(names))


def grant(
    s: Settings, by_provider: Mapping[str, tuple[str, ...]], plan: EgressPlan, sb: Sandbox, *, signin: bool
) -> Grant | None:
    """The way out `sb` is granted when HEARTH_EGRESS wants it to have one (hearth/egress/policy.py), else None."""
    cli = sb.kind is Kind.CLI
    if not wants_egress(s, cli=cli, provider="signin" if signin or sb.spec.providers else None):
        return None
    return Grant(sb.spec.slot.ip, sb.owner, domains(s, by_provider, plan, () if cli else sb.spec.providers))
