"""The expirer service."""
