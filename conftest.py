"""Root conftest: load the break-it plugin for every test session in this repo."""

pytest_plugins = ["harness.plugin"]
