"""One module per claim of the reference texts; each defines ``STUDY`` (see ``deepdiag.study``)."""
