"""Built-in plugin webhook: arrives with its own issue."""
