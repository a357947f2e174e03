"""coop-rl: fine-tune LLMs with reinforcement learning to cooperate in social dilemmas played as text."""

__version__ = "0.1.0"
