"""Sans-IO media transport: STUN/ICE, DTLS 1.2, SRTP, RTP/RTCP.

Nothing in this package imports trio, opens a socket or reads a clock: time
comes in as ``now`` (float seconds), and state machines hand back datagrams,
events and their next deadline.
"""
