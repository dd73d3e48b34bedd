"""Tasks: everything task-specific (tasks/base.py is the interface; fedgen.registry maps names)."""
