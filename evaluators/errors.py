"""Errors a user can cause (bad names, ranges, files); the CLI shows them as one line."""


class SuiteError(ValueError):
    pass
