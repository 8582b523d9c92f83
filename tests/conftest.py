"""Shared pytest configuration: registers spacegrid's reusable fixtures."""

pytest_plugins = ["spacegrid.testing.fixtures"]
