"""One scenario end to end (runner) and the settings every entry point shares (options)."""
