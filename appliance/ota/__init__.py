"""OTA on the box: receive a signed bundle, install it into the inactive slot, switch,
commit once healthy. The bundle format and its verifiers are the `ota` package; the A/B
slots are `firmware`; this package is the appliance's side between them.

    appliance.ota.service    OtaService: install, switch, start-up settling, trial, commit,
                             rollback (the one object the runtime and the routes hold)
    appliance.ota.installer  receive_bundle(): upload -> verified tree in the staging slot
    appliance.ota.staging    StagingWriter: payload -> files: hash, write, fsync (pipelined)
    appliance.ota.policy     DevicePolicy: the box's verdict on a header (sans-IO)
    appliance.ota.jobs       Job, the job state table, settle() after a restart (pure)
    appliance.ota.records    OtaRecords: jobs and the ledger (floor, denylist, time mark)
    appliance.ota.slots      Slots: the firmware slot manager, awaitable, errors translated
    appliance.ota.trial      until_healthy(): the wait before a version on trial commits
    appliance.ota.pacing     backpressure for a streamed request body under Quart
    appliance.ota.errors     OtaRefused and the device's codes

The operator's guide is docs/ota.md; the byte-level format docs/ota-bundle.md.
"""

from appliance.ota.errors import DeviceCode, OtaRefused
from appliance.ota.jobs import Job, JobState
from appliance.ota.service import OtaService

__all__ = ["DeviceCode", "Job", "JobState", "OtaRefused", "OtaService"]
