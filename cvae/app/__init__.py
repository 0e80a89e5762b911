"""The Gradio app: ``logic`` (testable, no UI) and ``ui`` (the page)."""
