"""MPO Discover: discovery."""
