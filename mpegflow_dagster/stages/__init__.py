"""The built-in stages, one module each: its work as plain functions over local paths and its
assets made with the stage API. `toolkit` holds what every stage function works with."""
