"""`awq-release`: the command line (main.py) and the in-process main job it runs (main_job.py)."""
