"""Examples of bringing your own trainer."""
