"""The secret leak check of the whole test run (issue 24, item 4): see plugin.py."""
