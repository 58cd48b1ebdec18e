"""A/B slot management on the box: boot counting, commit and rollback.

See docs/ota.md once the OTA issue lands; today this package is empty.
"""
