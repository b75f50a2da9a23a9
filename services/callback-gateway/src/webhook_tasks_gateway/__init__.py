"""The callback-gateway service."""
