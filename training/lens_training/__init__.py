"""lens training: building, importing, evaluating and exporting encoders (uses torch).

The server never imports this package; exports reach it only through the model repository.
"""
