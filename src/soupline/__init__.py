"""soupline: fine-tune on less, better-chosen data, then soup the results, reproducibly."""

__version__ = "0.1.0"
