"""rpm_core."""
