"""Where trades come from: replay files and their presets, the live feed, the synthetic market."""
