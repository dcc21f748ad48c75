"""What users look at: the geometry report (measures, figures, page)."""
