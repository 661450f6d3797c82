"""The kit's plumbing, shared by the hub, the observer and the runner: errors, names, config, files, git, processes, the daemon chassis and the CLI edge."""
