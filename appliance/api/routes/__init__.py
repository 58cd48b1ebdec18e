"""The API's routes, one blueprint per area, all under `/api/v1`."""
