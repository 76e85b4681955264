"""`mmw2s bench`: our stages side by side with the tools users would pick instead (see `run`)."""
