"""rpm_app: the application layer (the rpm command, demo, service launcher, reports, exports, admin tools)."""
