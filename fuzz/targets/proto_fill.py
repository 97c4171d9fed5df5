"""Sample protobuf messages with every field set, as seeds for the protobuf decoders."""

from __future__ import annotations

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

_SCALARS = {
    FieldDescriptor.TYPE_STRING: "sample",
    FieldDescriptor.TYPE_BYTES: b"\x00\x01\x02",
    FieldDescriptor.TYPE_BOOL: True,
    FieldDescriptor.TYPE_DOUBLE: 1.5,
    FieldDescriptor.TYPE_FLOAT: 2.5,
}


def _value(field: FieldDescriptor):  # type: ignore[no-untyped-def]
    if field.type == FieldDescriptor.TYPE_ENUM:
        values = field.enum_type.values
        return values[-1].number if values else 0
    return _SCALARS.get(field.type, 7)


def _is_repeated(field: FieldDescriptor) -> bool:
    # protobuf 7 dropped ``label``; older runtimes lack ``is_repeated``.
    if hasattr(field, "is_repeated"):
        return bool(field.is_repeated)
    return field.label == FieldDescriptor.LABEL_REPEATED


def fill(message: Message, depth: int = 3) -> Message:
    """Set every field of ``message`` (the first member of each oneof), nested ``depth`` deep."""
    seen_oneofs: set[str] = set()
    for field in message.DESCRIPTOR.fields:
        oneof = field.containing_oneof
        if oneof is not None and not getattr(oneof, "is_synthetic", False):
            if oneof.name in seen_oneofs:
                continue
            seen_oneofs.add(oneof.name)
        is_map = field.message_type is not None and field.message_type.GetOptions().map_entry
        repeated = _is_repeated(field)
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if depth == 0:
                continue
            if is_map:
                key_field = field.message_type.fields_by_name["key"]
                value_field = field.message_type.fields_by_name["value"]
                container = getattr(message, field.name)
                key = _value(key_field)
                if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                    fill(container[key], depth - 1)
                else:
                    container[key] = _value(value_field)
            elif repeated:
                fill(getattr(message, field.name).add(), depth - 1)
            else:
                fill(getattr(message, field.name), depth - 1)
        elif repeated:
            getattr(message, field.name).append(_value(field))
        else:
            setattr(message, field.name, _value(field))
    return message


def each_oneof_member(message_type: type[Message], oneof: str, depth: int = 3) -> list[Message]:
    """One message per member of ``oneof``, that member filled in."""
    out = []
    for field in message_type.DESCRIPTOR.oneofs_by_name[oneof].fields:
        message = message_type()
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            fill(getattr(message, field.name), depth)
            getattr(message, field.name).SetInParent()
        else:
            setattr(message, field.name, _value(field))
        out.append(message)
    return out
