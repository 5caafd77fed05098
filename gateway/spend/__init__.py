"""What requests cost: token usage and prices (``cost``, ``cost_map``) and the ledger that
records every request's spend and volume (``accounting.Accounting``).

Nothing is re-exported here: ``gateway.config`` imports ``spend.cost_map`` while it loads,
and the ledger needs the loaded config."""
