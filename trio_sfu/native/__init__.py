"""Compiled helpers for the media hot path, each built in place by a cffi (API mode) build
script next to it (`make native`), each with a pure-Python twin that is used when the extension
is missing or `TRIO_SFU_FASTPATH=0`. A foundation: no trio, no server layer."""
