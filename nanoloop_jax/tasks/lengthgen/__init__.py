"""tasks/lengthgen."""
