"""Inbound webhooks: verified, stored, handled on the queue."""
