"""Response functions: what actually happens when training points are removed."""
