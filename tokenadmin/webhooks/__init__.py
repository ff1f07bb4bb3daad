"""Signed webhooks and email notifications of an organization's events (docs/webhooks.md)."""
