"""The node agent (`tessera node`): allocation feed, task shims, heartbeats, logs."""
