"""What to break: scenarios, faults, expectations, and which of them a command line names."""
