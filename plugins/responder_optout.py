"""Built-in plugin optout: arrives with its own issue."""
