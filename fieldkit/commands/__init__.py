"""fieldkit's own CLI commands, one module each, added to the ``fieldkit`` group in :mod:`fieldkit.cli`."""
