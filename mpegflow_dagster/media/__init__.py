"""The FFmpeg layer: argv building, running, progress, probing. No Dagster imports here."""
