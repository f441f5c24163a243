"""The run around the loop: configuration (config), where it stands (state), checkpoints, what it writes (outputs),
what it measures (telemetry), the process it runs in (environment), and one-line errors (errors)."""
