"""The legal documents' catalog (docs/legal; generated with `make docs` by tools/legal.py)."""
