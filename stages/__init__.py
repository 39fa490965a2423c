"""One thin entry per DVC stage (python -m stages.<name>), plus sweep, report and preset."""
