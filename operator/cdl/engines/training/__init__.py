"""Training-side pieces shared by the training engines (code bundles, ...)."""
