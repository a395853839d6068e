"""MPO Discover: evaluators."""
