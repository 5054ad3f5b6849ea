"""One module per group of CLI subcommands; each ``cmd_*`` takes the parsed args and returns an exit code."""
