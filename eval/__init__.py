"""Evaluation against frozen opponents (shipped as ``coop_rl.eval``)."""
