"""Pagewire: Messenger and Instagram webhooks routed into each account's conversations."""
