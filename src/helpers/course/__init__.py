"""What the notebooks call: the one set-up call, the client, jobs, widgets, and the billing task's lessons.

``from helpers.course import setup`` is the first line of every notebook.
"""
from helpers.course.session import Course, environment_report, recorded_metrics, setup

__all__ = ["Course", "environment_report", "recorded_metrics", "setup"]
