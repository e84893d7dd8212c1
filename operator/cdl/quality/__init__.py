"""Model quality: evaluation, gates, reports, promotion, compression, monitoring."""
