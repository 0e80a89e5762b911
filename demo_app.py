"""Placeholder: the Gradio app arrives with the app issue."""
