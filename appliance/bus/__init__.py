"""The local message bus: codec, protocol, routing, streams and discovery (sans-IO parts).

`codec` splits a byte stream into frames and decodes their CBOR bodies; `messages` turns a
body into a `Message` (a head and one body kind) and back; `reasons` holds the close
reasons and the error hierarchy every part of the bus raises. The wire format is specified
in `docs/bus-protocol.md`.
"""

from appliance.bus.codec import (
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    Frame,
    FrameDecoder,
    choose_version,
    encode_frame,
)
from appliance.bus.messages import KINDS, Head, Message, NodeRecord, parse
from appliance.bus.reasons import (
    REASONS,
    BusError,
    FrameError,
    InvalidMessage,
    LocalProtocolError,
    MessageError,
    Reason,
    RemoteProtocolError,
    reason_for,
)

__all__ = [
    "KINDS",
    "PROTOCOL_VERSION",
    "REASONS",
    "SUPPORTED_VERSIONS",
    "BusError",
    "Frame",
    "FrameDecoder",
    "FrameError",
    "Head",
    "InvalidMessage",
    "LocalProtocolError",
    "Message",
    "MessageError",
    "NodeRecord",
    "Reason",
    "RemoteProtocolError",
    "choose_version",
    "encode_frame",
    "parse",
    "reason_for",
]
