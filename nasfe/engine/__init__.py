"""nasfe."""
