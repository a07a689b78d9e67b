"""What a TP path and the harness agree on, owned once and imported by both (docs/CONTRACT.md)."""
