"""The RFB handshake, terminated by the gateway on both sides.

Towards the sandbox the gateway is an RFB 3.8 client (hearth/rfb/client.py: security None, always *shared*, so a
viewer cannot disconnect the others by asking for exclusive access). Towards the viewer it is an RFB server that
offers 3.8 and follows whichever version the viewer answers, per the specification: 3.7 and 3.8 as such, every
other version (3.3, 3.5, Apple's 3.889, …) as 3.3. It then hands the viewer the sandbox's own ServerInit (hearth/gateway/greeting.py `Greeting`: the viewer's side runs
while the sandbox is still being reached).

So the client→server stream the relay frames always begins at a message boundary, whatever the viewer negotiated:
the view-only filter can never be out of step with the handshake.
"""

from __future__ import annotations

import re
import struct

from hearth.rfb.client import SEC_NONE, ReadExactly, Write

OFFERED = b"RFB 003.008\n"
_VERSION = re.compile(rb"RFB (\d{3})\.(\d{3})\n")


class ViewerHandshakeError(Exception):
    """The viewer did not speak RFB as the specification requires; the connection is closed (4400)."""


def viewer_version(banner: bytes) -> tuple[int, int]:
    """The protocol the viewer's ProtocolVersion message selects: (3, 8), (3, 7), or (3, 3) for any other."""
    m = _VERSION.fullmatch(banner)
    if m is None:
        raise ViewerHandshakeError(f"viewer sent {banner[:12]!r} instead of an RFB ProtocolVersion (RFB xxx.yyy)")
    major, minor = int(m[1]), int(m[2])
    if major == 3 and minor in (7, 8):
        return (3, minor)
    return (3, 3)


async def greet_viewer(read: ReadExactly, write: Write) -> tuple[int, int]:
    """The viewer's handshake up to its ClientInit (security None); returns the version. Needs nothing of the
    sandbox: the gateway runs it while the session boots and the sandbox is dialled, and sends the sandbox's
    ServerInit once it is known."""
    await write(OFFERED)
    version = viewer_version(await read(12))
    if version == (3, 3):  # the server decides the security type
        await write(struct.pack(">I", SEC_NONE))
    else:
        await write(bytes([1, SEC_NONE]))
        (choice,) = await read(1)
        if choice != SEC_NONE:
            if version == (3, 8):
                reason = b"hearth's gateway offers security type None (1) only"
                await write(struct.pack(">II", 1, len(reason)) + reason)
            raise ViewerHandshakeError(f"viewer chose security type {choice}; only None (1) was offered")
        if version == (3, 8):
            await write(struct.pack(">I", 0))  # SecurityResult OK (3.7 sends none for None)
    await read(1)  # ClientInit: the shared flag is ignored, the sandbox connection is always shared
    return version
