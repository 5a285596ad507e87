"""Tokens service: the vault that keeps page tokens encrypted at rest and hands them out."""
