"""The gateway: Meta's webhook endpoint; verifies, normalizes and hands events to the router."""
