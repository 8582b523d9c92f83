"""Shared pytest configuration: the suite's fixture names, adapters over the spacegrid pytest plugin's fixtures."""

pytest_plugins = ["spacegrid.testing.fixtures"]  # the plugin itself is loaded by its entry point (pytest11)
