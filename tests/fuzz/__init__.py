"""Hypothesis-generated webhooks against a running gateway."""
