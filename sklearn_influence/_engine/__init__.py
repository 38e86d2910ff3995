"""The engine: per-example gradients, curvature objects, solvers and streamed scores."""
