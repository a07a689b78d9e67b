"""Root conftest: the break-it plugin for every test session in this checkout.

An installed tp-breakit loads it through its ``pytest11`` entry point ``breakit``; a
checkout that is not installed gets it here under the same name, so ``-p no:breakit``
turns it off either way.
"""


def pytest_addhooks(pluginmanager) -> None:
    if pluginmanager.has_plugin("breakit") or pluginmanager.is_blocked("breakit"):
        return
    import harness.plugin

    pluginmanager.register(harness.plugin, "breakit")
