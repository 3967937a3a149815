"""Notes, a service written on the kit in the test folder: `python -m tests.kit_service` serves it."""
