"""`mmw2s run`: an experiment as a plan of stage configs, run side by side and summarised."""
