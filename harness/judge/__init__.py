"""The verdict from evidence: outcome, evidence rules, root cause, flight traces, and the result types."""
