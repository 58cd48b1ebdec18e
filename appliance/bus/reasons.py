"""Close reasons and the bus error hierarchy, in one place.

A `close` message carries a numeric `code` from `REASONS` and a human-readable text. Every
error the bus raises has a stable string `code` that is the `name` of its close reason, so
the translation from error to close frame is `reason_for(error.code)`, nowhere else.

    BusError
    ├── RemoteProtocolError       the peer sent something wrong (close or reject it)
    │   ├── FrameError            codec: the bytes are not a valid frame
    │   │   ├── BadVarint         bad_varint
    │   │   ├── BadVersion        bad_version
    │   │   ├── FrameTooLarge     frame_too_large
    │   │   ├── BadCrc            bad_crc
    │   │   ├── BadCbor           bad_cbor
    │   │   └── Truncated         truncated
    │   └── MessageError          bad_message: valid CBOR, not a valid message
    └── LocalProtocolError        we misused the codec or built an invalid message
        └── InvalidMessage        (also a ValueError)

A frame error is `fatal` when the byte stream cannot be resynchronised (nothing after it
can be decoded); a non-fatal one (a bad checksum, a body that is not valid CBOR) leaves the
decoder in step with the frames, and the protocol layer chooses what to do.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar


@dataclass(frozen=True)
class Reason:
    code: int
    name: str
    meaning: str


REASONS: tuple[Reason, ...] = (
    # 0-9: ordinary ends
    Reason(0, "normal", "Closed on purpose; nothing went wrong."),
    Reason(1, "going_away", "The endpoint is shutting down or restarting; reconnect later."),
    Reason(
        2,
        "replaced",
        "Reserved: this endpoint keeps the first holder of a node name and refuses the "
        "newer connection with name_taken.",
    ),
    # 10-19: framing (the codec)
    Reason(10, "bad_varint", "A header varint is not minimal, or is longer than 10 bytes."),
    Reason(11, "bad_version", "The frame's version is not one the receiver accepts."),
    Reason(12, "frame_too_large", "The frame's length is over the receiver's maximum."),
    Reason(13, "bad_crc", "Too many consecutive frames failed their CRC-32 check."),
    Reason(14, "bad_cbor", "The body is not one definite-length CBOR map of the allowed subset."),
    Reason(15, "truncated", "The connection ended in the middle of a frame."),
    # 20-29: message model
    Reason(20, "bad_message", "Unknown kind or field, missing field, wrong type or value."),
    # 30-39: session and authorisation
    Reason(30, "hello_required", "A message other than hello came before the welcome."),
    Reason(31, "unauthenticated", "The hello's token is missing, unknown, expired or revoked."),
    Reason(32, "forbidden", "The token does not allow this topic or operation."),
    Reason(33, "no_common_version", "The hello lists no protocol version the endpoint speaks."),
    Reason(34, "name_taken", "Another live connection holds this node name."),
    Reason(35, "hello_timeout", "No hello arrived within the time allowed."),
    Reason(36, "unexpected_message", "A kind not valid in this state or direction."),
    # 40-49: flow control and limits
    Reason(40, "slow_consumer", "The peer stopped reading and its bounded queue stayed full."),
    Reason(41, "bad_ack", "An acknowledgement for stream offsets that were never sent."),
    Reason(42, "window_exceeded", "Stream data beyond the window the receiver granted."),
    Reason(43, "limit_exceeded", "Too many subscriptions, streams or pending requests."),
    Reason(44, "bad_offset", "Stream data that contradicts the stream's offsets or its end."),
    Reason(45, "no_destination", "A stream's destination node is not connected to the endpoint."),
    Reason(46, "stream_expired", "A stream's receiver did not come back within the keep time."),
    Reason(47, "sender_gone", "A stream's sender went away before the stream's end."),
    # 50-59: relaying between endpoints
    Reason(
        50,
        "hop_limit",
        "Reserved: a message over the hop limit is not relayed (a publish is dropped and "
        "counted, a request answered no_responders).",
    ),
    Reason(51, "link_refused", "A link to another endpoint was refused (loop, same endpoint)."),
    # 60-69: liveness
    Reason(60, "ping_timeout", "No frame arrived within the liveness interval."),
    # 90-99: the endpoint itself
    Reason(90, "internal_error", "The endpoint failed to handle the connection (a bug)."),
)

BY_NAME: MappingProxyType[str, Reason] = MappingProxyType({r.name: r for r in REASONS})
BY_CODE: MappingProxyType[int, Reason] = MappingProxyType({r.code: r for r in REASONS})


def reason_for(code: str) -> Reason:
    """The close reason for an error code (`BusError.code`); KeyError if there is none."""
    return BY_NAME[code]


class BusError(Exception):
    code: ClassVar[str] = "internal_error"

    @property
    def reason(self) -> Reason:
        return reason_for(self.code)


class RemoteProtocolError(BusError):
    """The peer sent something that breaks the protocol."""


class FrameError(RemoteProtocolError):
    """The bytes are not a valid frame. `fatal`: the decoder has lost the frame boundaries."""

    fatal: bool = True

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class BadVarint(FrameError):
    code = "bad_varint"


class BadVersion(FrameError):
    code = "bad_version"


class FrameTooLarge(FrameError):
    code = "frame_too_large"


class BadCrc(FrameError):
    """A frame failed its checksum. It was dropped; `consecutive` counts the bad ones in a
    row, and the error is fatal once that reaches the decoder's limit."""

    code = "bad_crc"

    def __init__(self, detail: str, *, consecutive: int, fatal: bool) -> None:
        super().__init__(detail)
        self.consecutive = consecutive
        self.fatal = fatal


class BadCbor(FrameError):
    """The frame was intact (checksum good) but its body is not allowed CBOR."""

    code = "bad_cbor"
    fatal = False


class Truncated(FrameError):
    code = "truncated"


class MessageError(RemoteProtocolError):
    """A decoded body that is not a valid message. `field` is the dotted path of the
    offending field (`publish.topic`, `hello.node.labels`; `""` for the message itself);
    `problem` one of unknown_kind, unknown_field, missing_field, bad_type, bad_value."""

    code = "bad_message"

    def __init__(self, field: str, problem: str, detail: str) -> None:
        super().__init__(f"{field or 'message'}: {problem}: {detail}")
        self.field = field
        self.problem = problem
        self.detail = detail


class LocalProtocolError(BusError):
    """We used the bus wrongly (a bug on this side, not the peer's)."""


class InvalidMessage(LocalProtocolError, ValueError):
    """A message built locally with an invalid field; same fields as `MessageError`."""

    def __init__(self, field: str, problem: str, detail: str) -> None:
        super().__init__(f"{field or 'message'}: {problem}: {detail}")
        self.field = field
        self.problem = problem
        self.detail = detail
