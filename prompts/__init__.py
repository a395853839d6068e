"""MPO Discover: prompts."""
