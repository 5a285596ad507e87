"""Helpers shared by the test suite: real servers, real processes, waiting with deadlines."""
