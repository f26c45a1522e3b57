"""Built-in plugin guard: arrives with its own issue."""
