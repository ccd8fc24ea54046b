"""The ready-to-run code location: the Components in resources/defs/ (one VideoPipelineComponent
per pipeline, the VideoDeploymentComponent) and any stages of yours in that folder."""

from pathlib import Path

from dagster import load_from_defs_folder

defs = load_from_defs_folder(project_root=Path(__file__).parent)
