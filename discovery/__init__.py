"""MPO Discover: discovery. The front door (`discovery.api`) is re-exported here, loaded on first use
(but for `search`, which is also the name of the module `discovery.search`: use `discovery.api.search`)."""

_API = ("loss", "score", "tuned_baselines", "bench", "export")


def __getattr__(name):
    if name in _API:
        from discovery import api

        return getattr(api, name)
    raise AttributeError(f"module 'discovery' has no attribute {name!r}")


__all__ = list(_API)
