"""The DeepEdit family: interactive and automatic segmentation with the official `spleen_deepedit_annotation` layout."""
