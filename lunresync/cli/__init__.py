"""The ``lunresync`` command: parses arguments, calls the Python API, presents results.

Modules here import heavy libraries (rich, pyudev, dbus-fast) and the provider only when
a command needs them: Python starts slowly in the test VM, and ``lunresync --help`` should
not pay for it. docs/cli.md ("The CLI's modules") says which module is what.
"""
