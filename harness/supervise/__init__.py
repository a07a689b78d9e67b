"""Watch a launch: one loop, the stall clock, the ranks' log lines, and what the ranks answer when asked."""
