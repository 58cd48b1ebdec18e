"""The appliance: one trio process hosting the HTTP API, the store and every service."""

__version__ = "0.1.0"

__all__ = ["__version__"]
