"""Training-side concepts shared by the training engines (local and Determined)."""
