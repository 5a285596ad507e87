"""Subscriptions service: which pages Pagewire receives webhooks for, for which account."""
