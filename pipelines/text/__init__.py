"""Text steps: validation and cleaning of plain-text documents."""
