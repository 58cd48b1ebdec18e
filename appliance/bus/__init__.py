"""The local message bus: codec, protocol, routing, streams and discovery (sans-IO parts).

`codec` splits a byte stream into frames and decodes their CBOR bodies; `messages` turns a
body into a `Message` (a head and one body kind) and back; `reasons` holds the close
reasons and the error hierarchy every part of the bus raises. The wire format is specified
in `docs/bus-protocol.md`. `connection` is one connection's protocol state machine (bytes
in, `events` out, bytes out), `principal` who is on the other end and what it may do, and
`router` the endpoint's routing decisions (subscriptions, queue groups, requests, links).
"""

from appliance.bus.codec import (
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    Frame,
    FrameDecoder,
    choose_version,
    encode_frame,
)
from appliance.bus.connection import Connection, State
from appliance.bus.events import Closed, Event
from appliance.bus.messages import KINDS, Head, Message, NodeRecord, parse
from appliance.bus.principal import Authenticate, BusPrincipal, token_authenticator
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
from appliance.bus.router import RouteError, Router

__all__ = [
    "KINDS",
    "PROTOCOL_VERSION",
    "REASONS",
    "SUPPORTED_VERSIONS",
    "Authenticate",
    "BusError",
    "BusPrincipal",
    "Closed",
    "Connection",
    "Event",
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
    "RouteError",
    "Router",
    "State",
    "choose_version",
    "encode_frame",
    "parse",
    "reason_for",
    "token_authenticator",
]
