"""The ready-to-run code location: every pipeline in resources/pipelines/, on local storage."""

from pathlib import Path

from mpegflow_dagster.project import Project

defs = Project.load(Path(__file__).parent).definitions()
