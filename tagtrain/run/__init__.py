"""A run: its configuration (config.json), its directory and files, checkpoint files, the process it runs in (device, precision, DDP), and whether recorded figures are still its own."""
