"""tasks/addition."""
