"""Tables and plots for single runs and whole sweeps."""
