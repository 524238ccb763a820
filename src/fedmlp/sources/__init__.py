"""Data sources: each one knows a raw layout and turns it into images plus a label table."""
