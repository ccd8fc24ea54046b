"""A code location with the examples: the built-in vod pipeline (examples/pipelines/vod.yaml)
plus three stages of your own. `dagster dev -m examples.definitions` (from the repository root) shows them."""

from pathlib import Path

from dagster import Definitions

from examples.audio_loudnorm import audio_loudnorm
from examples.preview import teaser
from examples.watermark import watermarked
from mpegflow_dagster import Project

HERE = Path(__file__).parent
project = Project.load(HERE.parent, spec_files=[HERE / "pipelines" / "vod.yaml"])
defs = Definitions.merge(
    project.definitions(), Definitions(assets=[audio_loudnorm, watermarked, teaser])
)
