"""OTA tooling for the fleet operator: bundle format, keys, signing, verification, push.

See docs/ota-bundle.md once the OTA issue lands; today this package is empty.
"""
