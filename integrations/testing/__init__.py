"""Test doubles for exercising integrations without real providers."""
