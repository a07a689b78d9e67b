"""Developer tools run by nox sessions: the envelope fuzzer, the soak runner."""
