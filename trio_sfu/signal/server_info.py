"""What this server tells clients about itself in JoinResponse.server_info."""

from __future__ import annotations

from livekit.protocol import models

from trio_sfu import __version__

# Clients gate features on the LiveKit server version they see (livekit-client throws
# UnsupportedServer on an empty one), so we announce the LiveKit release whose signal
# behaviour we implement and carry our own name and version in debug_info.
COMPATIBLE_LIVEKIT_VERSION = "1.9.0"
# The signal protocol level we speak (LiveKit server's CurrentProtocol at that behaviour).
PROTOCOL_VERSION = 17


def server_info(node_id: str = "") -> models.ServerInfo:
    return models.ServerInfo(
        edition=models.ServerInfo.Edition.Standard,
        version=COMPATIBLE_LIVEKIT_VERSION,
        protocol=PROTOCOL_VERSION,
        node_id=node_id,
        debug_info=f"trio-sfu {__version__}",
    )
