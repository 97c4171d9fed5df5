"""Sans-IO media transport: STUN/ICE, DTLS 1.2, SRTP, RTP/RTCP, SCTP data channels.

Nothing in this package imports trio, opens a socket or reads a clock: time
comes in as ``now`` (float seconds), and state machines hand back datagrams,
events and their next deadline.

One vocabulary, so that a driver treats every state machine here alike
(:class:`~rtp.peer_session.PeerSession` for a whole peer; its parts
:class:`~rtp.peer_transport.PeerTransport`, the ICE agents, ``DtlsConnection``,
``SctpAssociation``, ``TransportFeedbackRecorder`` for tests and benches):

``receive*(data, [addr,] now)``
    Bytes from the wire: ``PeerSession.receive``, ``receive_datagram``,
    ``receive_stun``, ``receive_packet``. Never raises, whatever the bytes:
    what is malformed or unacceptable is dropped and counted.
``datagrams_to_send(now)`` / ``packets_to_send(now)``
    Drain what is ready to go out: UDP datagrams as ``(bytes, addr)`` where the
    object knows the address (bare ``bytes`` for DTLS, which does not), SCTP or
    RTCP packets for the layer below. Draining changes nothing else; the one
    object whose deadline only ever means "output is due" (the TWCC recorder)
    builds that output here rather than in a ``handle_timeout``.
``next_event()``
    One event at a time, None when there are none.
``next_deadline()``
    When :meth:`handle_timeout` is next needed, or None. Calling it again without
    an input in between gives the same answer.
``handle_timeout(now)``
    Do what is due at ``now``. Calling it early is harmless: nothing that is not
    due happens.
``send_*(...)`` and ``SctpAssociation.send``
    Queue something for the peer and **return bool**: True when queued, False
    when refused (not connected yet, closing, too large...), with a counter in
    the object's ``counters`` saying why. Sends never raise: the media path
    cannot afford an exception per packet, and a refused send is a drop, as in
    a router. ``PeerTransport.protect_rtp_datagram`` is the send for a fan-out:
    it hands the datagram back instead of queueing it, and None when refused.

What raises, from the :mod:`rtp.errors` family: parsers (``ParseError``), byte
transforms (``SrtpContext.protect_*``/``unprotect_*``; their per-packet callers
turn the error into a counter), and commands that hand back a handle and cannot
(``SctpAssociation.open_channel``). Internal invariants are ``assert``s.

After each input (a datagram, a timeout, a send) the driver drains the output,
datagrams first, then events until None, and then sleeps until
``next_deadline()``. Data structures that are not protocol state machines keep
the verbs of what they are: ``RtxBuffer.put/get``, ``ReceiveStats.on_packet``,
``TransportFeedbackRecorder.record`` (an arrival noted, not bytes received),
``SequenceUnwrapper.unwrap``.
"""
