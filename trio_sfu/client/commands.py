"""`trio-sfu token|room|join`: LiveKit's everyday `lk` commands, on our own client stack.

    trio-sfu token create --room R --identity I [--name N] [--grant G ...] [--valid-for 1h]
    trio-sfu room list | create R | delete R | participants R
    trio-sfu room mute R --identity I --track T [--unmute]
    trio-sfu room remove R --identity I
    trio-sfu join --room R --identity I [--publish-demo]

Where the server is: `--url`, else LIVEKIT_URL, else http://127.0.0.1:7880 (`trio-sfu --dev`).
The keys: `--api-key`/`--api-secret`, else LIVEKIT_API_KEY/LIVEKIT_API_SECRET, else the dev pair.
Exit codes: 0 done; 1 the server could not be reached, refused the key, or refused the call
(a one-line `trio-sfu: error: ...` on stderr says which); 2 bad arguments (argparse's own).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from typing import Any, Callable, Mapping, Sequence, TextIO

import attrs
import trio
from google.protobuf import json_format
from google.protobuf.message import Message
from livekit.protocol import models

from trio_sfu.client.errors import ClientError, JoinError
from trio_sfu.client.join import JoinOptions, run_join
from trio_sfu.client.server_api import (HttpEndpoint, RoomServiceClient, ServerApiError, ServerUnreachable,
                                        TwirpCallError, os_reason)
from trio_sfu.client.tokens import (DEFAULT_VALID_FOR, GRANT_NAMES, TokenError, check_sources, mint_token,
                                    parse_duration, parse_grants)
from trio_sfu.config import DEV_API_KEY, DEV_API_SECRET

DEFAULT_URL = "http://127.0.0.1:7880"
PROG = "trio-sfu"
COMMANDS = ("token", "room", "join")


class UsageError(Exception):
    """Arguments argparse let through that still make no sense (exit 2)."""


@attrs.frozen
class Credentials:
    url: str
    api_key: str
    api_secret: str


def credentials_from_args(args: argparse.Namespace, environ: Mapping[str, str]) -> Credentials:
    """Flags over LIVEKIT_* over the dev defaults; a key without its secret is a usage error."""
    url = args.url or environ.get("LIVEKIT_URL") or DEFAULT_URL
    key = args.api_key or environ.get("LIVEKIT_API_KEY") or DEV_API_KEY
    secret = args.api_secret or environ.get("LIVEKIT_API_SECRET")
    if not secret:
        if key != DEV_API_KEY:
            raise UsageError(f"no API secret for key {key!r}: use --api-secret or LIVEKIT_API_SECRET")
        secret = DEV_API_SECRET
    if args.command != "token":  # a token names no server
        try:
            HttpEndpoint.from_url(url)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    return Credentials(url, key, secret)


# ---------------------------------------------------------------------- arguments


def _connection_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("server")
    group.add_argument("--url", help=f"server URL, http(s):// or ws(s):// (env LIVEKIT_URL; default {DEFAULT_URL})")
    group.add_argument("--api-key", help=f"API key (env LIVEKIT_API_KEY; default the dev key {DEV_API_KEY!r})")
    group.add_argument("--api-secret", help="API secret (env LIVEKIT_API_SECRET; default the dev secret)")
    return parent


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a size looks like 640x360, not {text!r}") from None
    if not (16 <= width <= 3840 and 16 <= height <= 2160) or width % 2 or height % 2:
        raise argparse.ArgumentTypeError(f"the size must be even, 16x16 to 3840x2160, not {text!r}")
    return width, height


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {value}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number of at least 0, not {text!r}")
    return value


def _attribute(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"an attribute looks like key=value, not {text!r}")
    return key, value


def add_commands(commands: Any) -> None:
    """Add `token`, `room` and `join` to the `trio-sfu` subparsers."""
    connection = _connection_parent()

    token = commands.add_parser("token", help="mint access tokens")
    token_commands = token.add_subparsers(dest="token_command", metavar="{create}", required=True)
    create = token_commands.add_parser(
        "create", parents=[connection], help="print an access token (JWT) for a participant or an API caller",
        description="Print a LiveKit access token signed with the API key and secret.")
    create.add_argument("--room", default="", help="the room the token is for (needed for join and admin)")
    create.add_argument("--identity", default="", help="the participant's identity (needed for join)")
    create.add_argument("--name", default="", help="the participant's display name")
    create.add_argument("--metadata", default="", help="the participant's metadata")
    create.add_argument("--attribute", action="append", type=_attribute, default=[], metavar="KEY=VALUE",
                        help="a participant attribute (repeatable)")
    create.add_argument("--grant", action="append", default=[], metavar="GRANT",
                        help=f"grants, comma-separated, repeatable: {', '.join(GRANT_NAMES)}; or a JSON object of "
                             f"video grants in LiveKit's names ('{{\"canPublish\": false}}'). Without a room action "
                             f"(join, admin, list, create, record, ingress-admin) join is added")
    create.add_argument("--allow-source", action="append", default=[], metavar="SOURCE",
                        help="a track source the participant may publish (camera, microphone, screen_share, "
                             "screen_share_audio); repeatable; none = all")
    create.add_argument("--valid-for", default=None, metavar="DURATION",
                        help=f"how long the token is valid: 90s, 10m, 1h30m, 2d (default {DEFAULT_VALID_FOR / 3600:g}h)")

    room = commands.add_parser("room", help="list, create, delete rooms; list, mute, remove participants")
    room_commands = room.add_subparsers(dest="room_command", metavar="{list,create,delete,participants,mute,remove}",
                                        required=True)
    listing = room_commands.add_parser("list", parents=[connection], help="list the rooms")
    listing.add_argument("names", nargs="*", help="only these rooms")
    listing.add_argument("--json", action="store_true", help="print the rooms as JSON")
    make = room_commands.add_parser("create", parents=[connection], help="create a room")
    make.add_argument("room")
    make.add_argument("--empty-timeout", type=int, default=0, metavar="SECONDS",
                      help="close the room this long after the last participant left (0 = server default)")
    make.add_argument("--max-participants", type=int, default=0, metavar="N", help="0 = no limit")
    make.add_argument("--metadata", default="")
    delete = room_commands.add_parser("delete", parents=[connection], help="delete a room (everyone in it leaves)")
    delete.add_argument("room")
    participants = room_commands.add_parser("participants", parents=[connection], help="list a room's participants")
    participants.add_argument("room")
    participants.add_argument("--json", action="store_true", help="print the participants as JSON")
    mute = room_commands.add_parser("mute", parents=[connection], help="mute (or unmute) a participant's track")
    mute.add_argument("room")
    mute.add_argument("--identity", required=True)
    mute.add_argument("--track", required=True, metavar="TRACK",
                      help="the track's sid (TR_...), its name, or its source (camera, microphone, ...)")
    mute.add_argument("--unmute", action="store_true", help="unmute instead")
    remove = room_commands.add_parser("remove", parents=[connection], help="remove a participant from a room")
    remove.add_argument("room")
    remove.add_argument("--identity", required=True)

    join = commands.add_parser(
        "join", parents=[connection], help="join a room; with --publish-demo publish a moving picture and a tone",
        description="Join a room through trio-sfu's own client and show a live line of stats on stderr until "
                    "Ctrl-C.")
    join.add_argument("--room", required=True)
    join.add_argument("--identity", required=True)
    join.add_argument("--name", default="")
    join.add_argument("--publish-demo", action="store_true",
                      help="publish a moving-picture VP8 video and an Opus tone (real encodings with PyAV)")
    join.add_argument("--video-size", type=_size, default=(640, 360), metavar="WxH", help="default 640x360")
    join.add_argument("--fps", type=_positive_int, default=20)
    join.add_argument("--video-bitrate", type=_positive_int, default=600_000, metavar="BPS")
    join.add_argument("--tone", type=_non_negative_float, default=440.0, metavar="HZ", help="default 440")
    join.add_argument("--duration", type=_non_negative_float, default=0.0, metavar="SECONDS",
                      help="leave after this long (default 0: until Ctrl-C)")
    join.add_argument("--bind-host", default="127.0.0.1",
                      help="local address of the client's UDP sockets (must reach the server's media address)")


# ---------------------------------------------------------------------- output


def _when(seconds: int) -> str:
    if not seconds:
        return "-"
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _as_json(messages: Sequence[Message]) -> str:
    return json.dumps([json_format.MessageToDict(m, preserving_proto_field_name=True) for m in messages], indent=2)


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def format_rooms(rooms: Sequence[models.Room]) -> str:
    if not rooms:
        return "no rooms"
    rows = [["NAME", "SID", "PARTICIPANTS", "PUBLISHERS", "CREATED (UTC)"]]
    rows += [[r.name, r.sid, str(r.num_participants), str(r.num_publishers), _when(r.creation_time)] for r in rooms]
    return _table(rows)


def _track_line(track: models.TrackInfo) -> str:
    kind = models.TrackType.Name(track.type).lower()
    source = models.TrackSource.Name(track.source).lower()
    size = f" {track.width}x{track.height}" if track.width else ""
    return f"  {track.sid}  {kind} {source} {track.name!r}{size}{'  MUTED' if track.muted else ''}"


def format_participants(participants: Sequence[models.ParticipantInfo]) -> str:
    if not participants:
        return "no participants"
    lines = []
    for p in participants:
        state = models.ParticipantInfo.State.Name(p.state).lower()
        name = f" ({p.name})" if p.name else ""
        lines.append(f"{p.identity}{name}  {p.sid}  {state}  {len(p.tracks)} track(s)")
        lines += [_track_line(t) for t in p.tracks]
    return "\n".join(lines)


def find_track(participant: models.ParticipantInfo, wanted: str) -> models.TrackInfo:
    """The participant's track named by sid, name or source (in that order of preference)."""
    for match in (lambda t: t.sid == wanted, lambda t: t.name == wanted,
                  lambda t: models.TrackSource.Name(t.source).lower() == wanted.lower()):
        found = [t for t in participant.tracks if match(t)]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise ClientError(f"{wanted!r} names {len(found)} tracks of {participant.identity!r}: use the track sid")
    have = ", ".join(f"{t.sid} ({t.name!r})" for t in participant.tracks) or "none"
    raise ClientError(f"{participant.identity!r} has no track {wanted!r} (tracks: {have})")


# ---------------------------------------------------------------------- running


def _token_create(args: argparse.Namespace, creds: Credentials, out: TextIO) -> int:
    video = parse_grants(args.grant)
    if args.allow_source:
        video["canPublishSources"] = check_sources([s.strip() for s in ",".join(args.allow_source).split(",") if s])
    valid_for = parse_duration(args.valid_for) if args.valid_for is not None else DEFAULT_VALID_FOR
    token = mint_token(creds.api_key, creds.api_secret, identity=args.identity, room=args.room, video=video,
                       name=args.name, metadata=args.metadata, attributes=dict(args.attribute), valid_for=valid_for)
    print(token, file=out)
    return 0


async def _room(args: argparse.Namespace, creds: Credentials, out: TextIO) -> int:
    api = RoomServiceClient(creds.url, creds.api_key, creds.api_secret)
    command = args.room_command
    if command == "list":
        rooms = await api.list_rooms(args.names)
        print(_as_json(rooms) if args.json else format_rooms(rooms), file=out)
    elif command == "create":
        room = await api.create_room(args.room, empty_timeout=args.empty_timeout,
                                     max_participants=args.max_participants, metadata=args.metadata)
        print(f"created room {room.name!r} ({room.sid})", file=out)
    elif command == "delete":
        await api.delete_room(args.room)
        print(f"deleted room {args.room!r}", file=out)
    elif command == "participants":
        participants = await api.list_participants(args.room)
        print(_as_json(participants) if args.json else format_participants(participants), file=out)
    elif command == "mute":
        participant = await api.get_participant(args.room, args.identity)
        track = find_track(participant, args.track)
        muted = not args.unmute
        result = await api.mute_published_track(args.room, args.identity, track.sid, muted)
        print(f"{'muted' if result.muted else 'unmuted'} {result.sid} ({result.name!r}) of {args.identity!r} "
              f"in {args.room!r}", file=out)
        if result.muted != muted:
            raise ClientError(f"the server left {result.sid} {'muted' if result.muted else 'unmuted'}")
    elif command == "remove":
        await api.remove_participant(args.room, args.identity)
        print(f"removed {args.identity!r} from {args.room!r}", file=out)
    return 0


def _join(args: argparse.Namespace, creds: Credentials, err: TextIO) -> int:
    video: dict[str, Any] = {"roomJoin": True}
    if not args.publish_demo:
        video["canPublish"] = False
    token = mint_token(creds.api_key, creds.api_secret, identity=args.identity, room=args.room, video=video,
                       name=args.name)
    width, height = args.video_size
    options = JoinOptions(url=creds.url, token=token, room=args.room, identity=args.identity,
                          publish_demo=args.publish_demo, width=width, height=height, fps=args.fps,
                          video_bitrate=args.video_bitrate, tone_hz=args.tone, duration=args.duration,
                          bind_host=args.bind_host)
    outcome = trio.run(run_join, options, err)
    if outcome.error is not None:
        raise ClientError(outcome.error)
    return 0


def _explain(exc: BaseException, creds: Credentials) -> str:
    """The one line a person reads when a command fails."""
    refused_key = (f"the server refused the API key or secret ({{}}); check --api-key/--api-secret or "
                   f"LIVEKIT_API_KEY/LIVEKIT_API_SECRET (key in use: {creds.api_key!r})")
    if isinstance(exc, TwirpCallError) and exc.unauthenticated:
        return refused_key.format(exc)
    if isinstance(exc, ServerUnreachable):
        return f"{exc}; is the server running? (start one with `trio-sfu --dev`)"
    if isinstance(exc, JoinError):
        if exc.status_code == 401:
            return refused_key.format(str(exc).removeprefix("join refused: "))
        cause = exc.__cause__
        if isinstance(cause, OSError):
            endpoint = HttpEndpoint.from_url(creds.url)
            return (f"cannot reach the server at {endpoint.base} ({os_reason(cause)}); is the server running? "
                    f"(start one with `trio-sfu --dev`)")
    return str(exc)


def run_command(args: argparse.Namespace, environ: Mapping[str, str] | None = None,
                out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run a parsed `token`, `room` or `join` command; the exit code."""
    environ = os.environ if environ is None else environ
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err

    def fail(code: int, message: str) -> int:
        print(f"{PROG}: error: {message}", file=err, flush=True)
        return code

    try:
        creds = credentials_from_args(args, environ)
    except UsageError as exc:
        return fail(2, str(exc))
    runners: dict[str, Callable[[], int]] = {
        "token": lambda: _token_create(args, creds, out),
        "room": lambda: trio.run(_room, args, creds, out),
        "join": lambda: _join(args, creds, err),
    }
    try:
        return runners[args.command]()
    except TokenError as exc:
        return fail(2, str(exc))
    except (ServerApiError, ClientError) as exc:
        return fail(1, _explain(exc, creds))
    except KeyboardInterrupt:  # Ctrl-C during a room call (join handles its own)
        return 130


__all__ = ["COMMANDS", "Credentials", "DEFAULT_URL", "add_commands", "credentials_from_args", "find_track",
           "format_participants", "format_rooms", "run_command"]
