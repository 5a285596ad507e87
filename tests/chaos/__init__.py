"""`make chaos`: crashes, outages and freezes under a Meta-like sender, then a full comparison."""
