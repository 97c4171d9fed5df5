"""Sans-IO SDP: a typed model, parser/serializer and the SFU's offer/answer negotiator."""
