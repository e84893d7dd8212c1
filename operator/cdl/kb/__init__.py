"""The model knowledge base: one read API (and the dashboard on it) over what PostgreSQL and the
artifact store hold about experiments, trials, model versions and deployments."""
