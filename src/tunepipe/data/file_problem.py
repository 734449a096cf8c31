"""The error of an input file that cannot be read as a whole (the ``ingest`` readers raise it)."""


class FileProblem(Exception):
    """A whole file cannot be read: not one record's fault, so the stage fails whatever ``on_error`` says."""
