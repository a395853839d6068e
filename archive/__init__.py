"""MPO Discover: archive."""
