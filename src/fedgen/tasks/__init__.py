"""Tasks: everything task-specific (tasks/base.py is the interface; fedgen.experiment.registry maps names)."""
