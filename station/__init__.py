"""station: the nurse station (a people-facing web application over rpm.alerts)."""
