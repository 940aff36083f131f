"""Bulk embedding on Ray Data: `lens bulk embed` and `lens index import`."""
