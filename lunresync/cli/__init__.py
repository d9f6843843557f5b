"""The ``lunresync`` command: parses arguments, calls the Python API, presents results.

Modules here import heavy libraries (rich, pyudev) only inside the commands that need
them: Python starts slowly in the test VM, and ``lunresync --help`` should not pay for it.
"""
