"""The commands behind ``fedgen compare``, ``fedgen reproduce`` and ``fedgen export``."""
