"""Measure webhook-tasks against ceilings taken in the same run (`make bench`)."""
