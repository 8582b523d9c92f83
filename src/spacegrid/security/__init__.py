"""Authentication, authorization and encryption of the grid (issue 11)."""
