"""The VSS-style requester workflow: backup document, restore session, writers, LUN swap
and script mode."""
