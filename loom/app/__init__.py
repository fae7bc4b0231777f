"""`loom serve`: the web demo (Gradio, optional extra `.[app]`). `stream` turns a generation into events."""
