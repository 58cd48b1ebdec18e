"""OTA bundles for the appliance: format, keys, trust root, signing, verification, tooling.

A bundle is one file: a magic line, a length-prefixed CBOR header holding the manifest's
exact bytes and ed25519 signatures over them, then the payload files back to back in
manifest order. docs/ota-bundle.md is the byte-level specification; docs/ota.md the
operator's guide.

The verifying side is sans-IO, like TUF's `TrustedMetadataSet` and h11: values and bytes
in, verdicts and events out, no file or socket in sight, so the device drives it from its
upload stream and the tools drive it from files:

    ota.header     HeaderReader: the preamble and header, size-capped before reading
    ota.verify     verify_header(): signatures first, then schema, then device policy
    ota.payload    PayloadReader: streamed payload -> FileStart/FileData/FileDone events
    ota.manifest   Manifest, PayloadEntry, parse_manifest(), encode_manifest()
    ota.trust      TrustRoot, Rotation, rotate(): the keys a device believes
    ota.keys       PublicKey, SecretKey, key ids and key files
    ota.signatures Signature, the signing contexts, the threshold rule
    ota.version    Version: semantic versions compared by precedence
    ota.errors     OtaError (with a stable ErrorCode) and OtaMisuse

And the blocking edges: `ota.build` (pack and sign a tree), `ota.files` (`verify_file`,
`unpack_file`), `ota.cli` (the `ota` command).
"""

from ota.errors import ErrorCode, OtaError, OtaMisuse
from ota.files import read_header, unpack_file, verify_file
from ota.header import MAX_HEADER_SIZE, BundleHeader, HeaderReader
from ota.keys import PublicKey, SecretKey, key_id_of
from ota.manifest import Manifest, PayloadEntry, parse_manifest
from ota.payload import NEED_DATA, PAYLOAD_DONE, FileData, FileDone, FileStart, PayloadReader
from ota.signatures import Signature
from ota.trust import Rotation, TrustRoot, rotate, sign_rotation
from ota.verify import verify_header
from ota.version import Version

__all__ = [
    "MAX_HEADER_SIZE",
    "NEED_DATA",
    "PAYLOAD_DONE",
    "BundleHeader",
    "ErrorCode",
    "FileData",
    "FileDone",
    "FileStart",
    "HeaderReader",
    "Manifest",
    "OtaError",
    "OtaMisuse",
    "PayloadEntry",
    "PayloadReader",
    "PublicKey",
    "Rotation",
    "SecretKey",
    "Signature",
    "TrustRoot",
    "Version",
    "key_id_of",
    "parse_manifest",
    "read_header",
    "rotate",
    "sign_rotation",
    "unpack_file",
    "verify_file",
    "verify_header",
]
