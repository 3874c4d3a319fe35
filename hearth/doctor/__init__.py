"""`hearth doctor`: walk a session's path hop by hop and name the first broken one, with evidence and the fix."""

from hearth.doctor.checks import config_report, diagnose, diagnose_session, verdict
from hearth.doctor.context import Parts, parts_of
from hearth.doctor.report import CheckResult, Finding, Report, render

__all__ = [
    "CheckResult",
    "Finding",
    "Parts",
    "Report",
    "config_report",
    "diagnose",
    "diagnose_session",
    "parts_of",
    "render",
    "verdict",
]
