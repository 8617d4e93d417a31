"""Settings: the typed schema, the YAML presets (presets/, packaged), loading and --set."""
