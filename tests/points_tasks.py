"""Point functions for tests/test_points.py (Ray pickles them by value: the test directory is not
importable on Ray's workers)."""
import os
from pathlib import Path


def square(config: dict) -> dict:
    return {"square": config["x"] * config["x"]}


def fail_on_three(config: dict) -> dict:
    if config["x"] == 3:
        raise ValueError(f"x = 3 is refused\nsecond line")
    return square(config)


def die_once(config: dict) -> dict:
    """Kills its own worker process on the first attempt (a marker file remembers it), then
    succeeds: Ray's retry must bring the point back."""
    marker = Path(config["marker"])
    if not marker.exists():
        marker.write_text("died")
        os._exit(1)
    return square(config)


def die_always(config: dict) -> dict:
    if config["x"] == 2:
        os._exit(1)
    return square(config)
