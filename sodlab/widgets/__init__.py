"""Interactive explorers (ipywidgets) built on the library; each view is a plain function."""
