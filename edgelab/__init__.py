"""edgelab: the plumbing behind the model-compression workbook."""
__version__ = "0.1.0"
