"""Stats snapshots, the lifecycle event log, leak detection and metric exporters."""
