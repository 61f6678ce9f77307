"""A plugin whose import fails, as a plugin with a missing dependency or a bug at import time would."""

raise RuntimeError("fieldkit-plugin-broken fails on import on purpose")
