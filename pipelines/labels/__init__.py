"""Label steps: moving finished annotations from Label Studio into PostgreSQL."""
