"""Orgs, users, API keys and bearer tokens."""
