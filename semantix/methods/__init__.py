"""Method plugins. Each file names its paper and the settings it follows; see `base.Method`."""
