"""Dagster Components: a code location's video pipelines and deployment, declared in YAML.

A `defs` folder (here `resources/defs/`, loaded by `definitions.py` with Dagster's
`load_from_defs_folder`) holds one `VideoPipelineComponent` per pipeline and one
`VideoDeploymentComponent`; `dagster dev` and `dg list defs` show what they build. Python files
in the folder (your own `@video_asset` stages) are loaded beside them.

Example (`resources/defs/vod/defs.yaml`):

    .. code-block:: yaml

        type: mpegflow_dagster.VideoPipelineComponent
        attributes:
          spec: ../../pipelines/vod.yaml
"""

from pathlib import Path
from typing import Annotated, Optional

from dagster import (
    Component,
    ComponentLoadContext,
    Definitions,
    Model,
    ResolutionContext,
    Resolvable,
    Resolver,
)
from pydantic import Field

from .project import deployment_definitions, load_settings, pipeline_definitions
from .spec import PipelineSpec, load_spec

SETTINGS_FILE = "resources/settings.yaml"


def _relative(description: str) -> Resolver:
    """A path attribute written relative to the component's folder, resolved to an absolute one."""

    def resolve(context: ResolutionContext, value: Optional[str]) -> Optional[Path]:
        return None if value is None else context.resolve_source_relative_path(value)

    return Resolver(resolve, model_field_type=Optional[str], description=description)


class VideoPipelineComponent(Component, Resolvable, Model):
    """One video pipeline from its typed spec: the assets of its graph (partitioned by video),
    its job `<pipeline>_video` and, when the deployment names an upload bucket, its S3 upload sensor."""

    spec: Annotated[
        Path, _relative("The pipeline spec (YAML), relative to this component's folder.")
    ]
    presets: Annotated[
        Optional[Path],
        _relative(
            "Folder of encoder presets, relative to this component's folder. Default: `presets/` beside the "
            "spec's folder."
        ),
    ] = None
    settings: str = Field(
        default=SETTINGS_FILE, description="The deployment settings, relative to the project root."
    )

    def load_spec(self) -> PipelineSpec:
        return load_spec(self.spec, self.presets)

    def build_defs(self, context: ComponentLoadContext) -> Definitions:
        settings = load_settings(context.project_root / self.settings, context.project_root)
        return pipeline_definitions(self.load_spec(), settings)


class VideoDeploymentComponent(Component, Resolvable, Model):
    """Where a code location's pipelines run: the resources every stage uses (FFmpeg, binary IO
    manager on local disk or S3, delivery, S3 sources, events and webhooks), the webhook delivery
    sensor and the executor (in process, or Celery workers), from the deployment settings."""

    settings: str = Field(
        default=SETTINGS_FILE, description="The deployment settings, relative to the project root."
    )

    def build_defs(self, context: ComponentLoadContext) -> Definitions:
        return deployment_definitions(
            load_settings(context.project_root / self.settings, context.project_root)
        )
