"""Serving engines (Model Deployment): the local processes and Seldon Core."""
