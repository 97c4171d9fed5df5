"""trio-sfu: a WebRTC SFU on Trio that speaks LiveKit's wire protocol."""

__version__ = "0.1.0"
