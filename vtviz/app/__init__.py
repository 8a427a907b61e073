"""Support for the Streamlit app (``app/streamlit_app.py``): model store, uploads, per-image caching."""
