"""The compiled fan-out's C declarations are written once, in trio_sfu/native/fanout.h; build.py
derives cffi's cdef from the header's marked region. Checked against cffi's own parser and, where
it is built, against the compiled module: the struct Python sees has exactly the header's fields
up to the private marker."""

from __future__ import annotations

import re

import cffi
import pytest

from trio_sfu.native import build


def header_public_fields() -> list[str]:
    """The fp_track field names fanout.h declares before its private marker, in order."""
    text = build.HEADER.read_text()
    body = text[text.index("typedef struct {") + len("typedef struct {"):text.index("/* cffi: private")]
    body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
    names = []
    for declaration in filter(str.strip, body.split(";")):
        # `int64_t a, b, *c` or `int16_t pt_map[128]`: each declarator's name.
        names += [re.search(r"(\w+)\s*(\[\d+\])?\s*$", part).group(1) for part in declaration.split(",")]
    return names


def test_the_derived_cdef_parses_and_leaves_values_and_private_fields_to_the_compiler():
    cdef = build.cdef_from_header(build.HEADER.read_text())
    ffi = cffi.FFI()
    ffi.cdef(cdef)  # raises on anything cffi's parser cannot read
    assert "#define FP_MAX_BATCH ...\n" in cdef and "1024" not in cdef
    assert "sockaddr_storage" not in cdef and "...;" in cdef
    for function in ("fp_forward", "fp_drop_other_layer", "fp_set_address"):
        assert f"int {function}(" in cdef


def test_a_header_without_the_markers_is_a_clear_error():
    with pytest.raises(ValueError, match="cffi cdef: begin"):
        build.cdef_from_header("typedef struct { int a; } fp_track;")


@pytest.mark.compiled("_fanout")
def test_the_compiled_struct_has_the_header_fields():
    from trio_sfu import native

    fields = [name for name, _ in native.compiled.ffi.typeof("fp_track").fields]
    assert fields == header_public_fields()
    assert "armed" in fields and "fd" in fields and "addr" not in fields
