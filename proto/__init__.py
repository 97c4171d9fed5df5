"""Protobuf sources and generated modules for trio-sfu's own node-to-node messages."""
