"""The router: stores every webhook event once, in the right account's conversation."""
