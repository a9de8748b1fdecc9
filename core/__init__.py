"""What every layer shares: the project's exceptions and the retry with backoff.

The lowest package: `app/` (entry points), `agents/` (stream stages) and `tables/` (state and
ClickHouse tables) all import it, and it imports none of them.
"""
