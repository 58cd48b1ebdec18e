"""The process: settings in, root nursery, services started in order, signals, stop."""

from appliance.runtime.activation import listen_fds_http
from appliance.runtime.lock import AlreadyRunning
from appliance.runtime.main import StartupError, run

__all__ = ["AlreadyRunning", "StartupError", "listen_fds_http", "run"]
