"""Request and response bodies (they shape the OpenAPI schema). Credentials never appear here."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from hearth.session.view import SessionView
from hearth.signin import wording
from hearth.signin.prompts import SigninPrompt


def _utc(value: datetime) -> datetime:
    """The store keeps UTC, and SQLite hands it back without its zone: an RFC 3339 date-time needs one."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_utc)]  # a date-time of a response body: always with its zone


class StartRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.@:\-]+$", examples=["user-42"])
    provider: str | None = Field(None, max_length=64, pattern=r"^[a-z0-9_]+$", examples=["claude_code"])
    mode: str | None = Field(
        None,
        max_length=32,
        description="remote_browser (sign in through the sandbox's browser) or direct (in the person's own browser); "
        "default HEARTH_SIGNIN_MODE",
        examples=["direct"],
    )
    return_url: str | None = Field(
        None,
        max_length=2048,
        description="where the viewer page sends the person when the sign-in ends (done: after a few seconds; "
        "failed or cancelled: a link); its origin must be one of HEARTH_EMBED_ORIGINS, else 400",
        examples=["https://app.example.com/settings/cli"],
    )


class StartResponse(BaseModel):
    session_id: str
    status: str
    queue_position: int | None = Field(None, description="while `queued`: 1 = the next sandbox to boot")
    viewer_token: str
    viewer_url: str


class SigninOut(BaseModel):
    """What the person must see to sign in in their own browser (direct mode)."""

    flow: str
    url: str
    user_code: str | None
    awaiting_code: bool
    message: str | None = Field(
        description="a refused code, in the person's words",
        examples=["That code was not accepted. A new sign-in link is ready — open it and sign in again."],
    )
    detail: str | None = Field(None, description="what the provider's CLI itself said (for Details)")
    renewed: bool = Field(False, description="the link changed since the person's code was sent: open the new one")


class CodeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str = Field(description="the code the provider showed the person (at most 512 characters)")


class SessionOut(BaseModel):
    session_id: str
    user_id: str
    provider: str | None
    mode: str
    status: str
    reason: str | None
    hop: str | None
    driver: str
    node: str = Field("local", description="the node whose sandbox serves the session (HEARTH_NODE_ID)")
    sandbox_ip: str | None
    timings: dict[str, float] = Field(description="seconds from creation until each boot stage completed")
    created_at: UtcDatetime
    updated_at: UtcDatetime
    signin: SigninOut | None = Field(None, description="direct mode: the sign-in link (and code) to show the person")
    queue_position: int | None = Field(None, description="while `queued`: 1 = the next sandbox to boot")
    message: str = Field(
        "",
        description="what is happening, in the words the viewer page shows the person (no state names or codes)",
        examples=["Open the Claude sign-in page and enter the code shown here."],
    )

    @classmethod
    def of(
        cls,
        v: SessionView,
        signin: SigninPrompt | None = None,
        position: int | None = None,
        message: str | None = None,
    ) -> SessionOut:
        """`message`: default the words of hearth/signin/wording.py for this session (as the page says them)."""
        if message is None:
            message = wording.for_session(v, None, signin, queue_position=position).message
        return cls(
            message=message,
            queue_position=position,
            session_id=v.id,
            user_id=v.user_id,
            provider=v.provider,
            mode=v.mode.value,
            status=v.status.value,
            reason=v.reason,
            hop=v.hop,
            driver=v.driver,
            node=v.node_id,
            sandbox_ip=v.sandbox_ip,
            timings=v.timings,
            created_at=v.created_at,
            updated_at=v.updated_at,
            signin=SigninOut(**signin.public()) if signin is not None else None,
        )


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scope: str = Field("control", pattern=r"^(view|control)$")


class TokenResponse(BaseModel):
    viewer_token: str
    viewer_url: str
    scope: str


class ErrorOut(BaseModel):
    """Every error answer of the API: the reason, the hop of the session path that failed (when one did) and the
    fix."""

    error: str
    hop: str | None = None
    hint: str | None = None
    node: str | None = Field(None, description="421: the node that holds the session (call it, or go through an edge)")


class FieldError(BaseModel):
    loc: list[str | int] = Field(description='where: ["body", "user_id"], ["query", "limit"], ["path", …]')
    msg: str
    type: str


class ValidationErrorOut(ErrorOut):
    """422: the request is not valid — the body is not strict JSON, or a field fails validation (named in `error`
    and in `detail`)."""

    detail: list[FieldError] = Field(default_factory=list)


class Health(BaseModel):
    ok: bool
    driver: str
    fabric: str
    active_sessions: int
    detail: dict[str, Any] = Field(default_factory=dict)
